"""MobileNetV1 (width 0.5, 62 outputs) as 3DDFA_V2 ``models/mobilenet_v1.py`` builds it.

Module names match the released state dict (``conv1``, ``bn1``, ``dw2_1.conv_dw`` ...), so the
safetensors file loads with ``strict=True``. Only ``fc_param`` is used at inference; ``fc_lm`` is
kept so the weights load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

# (name, in, out, stride) at width 1.0; the README lists them at width 0.5 (halved below).
_BLOCKS = [
    ("dw2_1", 32, 64, 1),
    ("dw2_2", 64, 128, 2),
    ("dw3_1", 128, 128, 1),
    ("dw3_2", 128, 256, 2),
    ("dw4_1", 256, 256, 1),
    ("dw4_2", 256, 512, 2),
    ("dw5_1", 512, 512, 1),
    ("dw5_2", 512, 512, 1),
    ("dw5_3", 512, 512, 1),
    ("dw5_4", 512, 512, 1),
    ("dw5_5", 512, 512, 1),
    ("dw5_6", 512, 1024, 2),
    ("dw6", 1024, 1024, 1),
]


class DepthWiseBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(inplanes, inplanes, 3, stride, 1, groups=inplanes, bias=False)
        self.bn_dw = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv_sep = nn.Conv2d(inplanes, planes, 1, 1, 0, bias=False)
        self.bn_sep = nn.BatchNorm2d(planes, eps=1e-5)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn_dw(self.conv_dw(x)))
        return self.relu(self.bn_sep(self.conv_sep(x)))


class MobileNetV1(nn.Module):
    """(N, 3, 120, 120) BGR scaled (p - 127.5) / 128 -> (N, 62) normalised 3DMM parameters."""

    def __init__(self, widen_factor: float = 0.5, num_classes: int = 62, num_landmarks: int = 136) -> None:
        super().__init__()
        w = lambda c: int(c * widen_factor)  # noqa: E731
        self.conv1 = nn.Conv2d(3, w(32), 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w(32), eps=1e-5)
        self.relu = nn.ReLU(inplace=True)
        for name, cin, cout, stride in _BLOCKS:
            setattr(self, name, DepthWiseBlock(w(cin), w(cout), stride))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc_param = nn.Linear(w(1024), num_classes)
        self.fc_lm = nn.Linear(w(1024), num_landmarks)  # unused head of the released weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for name, *_ in _BLOCKS:
            x = getattr(self, name)(x)
        return self.fc_param(torch.flatten(self.avgpool(x), 1))
