"""MobileNetV1 (width 0.5, 62 outputs) as 3DDFA_V2 ``models/mobilenet_v1.py`` builds it.

Module names match the released state dict (``conv1``, ``bn1``, ``dw2_1.conv_dw`` ...), so the
safetensors file loads with ``strict=True``. Only ``fc_param`` is used at inference; ``fc_lm`` is
kept so the weights load unchanged.
"""

from __future__ import annotations

import math

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


class MobileNetV1Tokens(nn.Module):
    """The 3DDFA_V2 MobileNetV1-0.5 trunk as a token encoder for the FaceLift decoder.

    Face-trained weights (300W-LP) exist here as a local file, so this encoder starts from them
    (``train.init_backbone``) instead of from scratch. Tokens: the stride-16 map after ``dw5_5``
    (256 channels, 8x8 at 128 px) and the stride-32 map after ``dw6`` (512 channels, 4x4; the
    features the teacher's own pose/shape head reads), the latter projected to 256 channels; each
    grid gets a learned position embedding. Input: the model's normalised RGB crop; the network was
    trained on BGR, so the channels are reversed here (configure mean 0.5, std 0.502 to match the
    teacher's ``(p - 127.5) / 128``).
    """

    STRIDE16_CHANNELS = 256
    STRIDE32_CHANNELS = 512

    def __init__(self, img_size: int, multiscale: bool = True) -> None:
        super().__init__()
        self.trunk = MobileNetV1()
        del self.trunk.fc_param, self.trunk.fc_lm, self.trunk.avgpool  # the head is not used
        self.multiscale = multiscale
        self.num_features = self.STRIDE16_CHANNELS
        g16, g32 = math.ceil(img_size / 16), math.ceil(img_size / 32)
        self.pos16 = nn.Parameter(torch.zeros(1, g16 * g16, self.num_features))
        nn.init.trunc_normal_(self.pos16, std=0.02)
        if multiscale:
            self.proj32 = nn.Linear(self.STRIDE32_CHANNELS, self.num_features)
            self.pos32 = nn.Parameter(torch.zeros(1, g32 * g32, self.num_features))
            nn.init.trunc_normal_(self.pos32, std=0.02)

    def load_trunk(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Load the teacher's weights (``mb05_120x120.safetensors`` keys) into the trunk; returns the
        keys that were not used (its unused heads)."""
        own = self.trunk.state_dict()
        unused = [k for k in state if k not in own]
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise KeyError(f"weights lack {len(missing)} trunk tensors, e.g. {missing[:3]}")
        self.trunk.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        return unused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        x = t.relu(t.bn1(t.conv1(x.flip(1))))  # RGB -> BGR
        for name, *_ in _BLOCKS[:-2]:
            x = getattr(t, name)(x)
        tokens = x.flatten(2).transpose(1, 2) + self.pos16
        if not self.multiscale:
            return tokens
        y = t.dw6(t.dw5_6(x))
        coarse = self.proj32(y.flatten(2).transpose(1, 2)) + self.pos32
        return torch.cat([tokens, coarse], dim=1)
