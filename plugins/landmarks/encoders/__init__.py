"""Image encoders that are not timm models, by name (``LandmarkTransformerConfig.backbone``).

Add one: a module here with an ``nn.Module`` whose ``forward`` maps ``(B, 3, S, S)`` to tokens
``(B, N, num_features)``, registered below. timm names (ViT, ResNet) need no entry.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from plugins.landmarks.encoders.mobilenet_v1 import MobileNetV1Tokens

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    # 3DDFA_V2's face-trained MobileNetV1-0.5: stride-16 + stride-32 tokens
    "mobilenetv1_050_3ddfa": lambda img_size, **kw: MobileNetV1Tokens(img_size, **kw),
    "mobilenetv1_050_3ddfa_s16": lambda img_size, **kw: MobileNetV1Tokens(img_size, multiscale=False, **kw),
}
