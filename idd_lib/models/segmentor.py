"""Segmentation networks: dilated ResNet or MobileNetV2 backbones from torchvision with PSP or ASPP heads.

Every network is a :class:`Segmentor`; its forward returns a dict with

* ``out``  - main logits at feature resolution (output stride 8 by default),
* ``aux``  - auxiliary logits from layer3 (when the aux head is enabled),
* ``feat`` - the head's pre-classifier feature map, the feature IDD and PID distil.

Logits stay at feature resolution: the distillation literature distils the 1/8-resolution
maps (docs/baselines.md), and the losses and the evaluator upsample where they need labels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet, conv3x3
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.fcn import FCNHead

from ..config import ModelConfig
from .pretrained import load_backbone_weights


class DilatedBasicBlock(BasicBlock):
    """torchvision's BasicBlock refuses dilation > 1; dilated ResNet18/34 (PSPNet-R18) needs it."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1, norm_layer=None):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, 1, norm_layer)
        if dilation > 1:
            self.conv1 = conv3x3(inplanes, planes, stride, dilation=dilation)
            self.conv2 = conv3x3(planes, planes, dilation=dilation)


class DilatedResNet(ResNet):
    """torchvision ResNet with a width multiplier, optional deep stem and dilation for OS 8/16.

    ``width=1`` and the standard stem give torchvision's architecture exactly (so its ImageNet
    weights load); ``deep_stem`` is the three-3x3-conv stem of the PSPNet lineage (ResNet-C).
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], width: float = 1.0,
                 deep_stem: bool = False, output_stride: int = 8):
        nn.Module.__init__(self)
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride: expected 8, 16 or 32, got {output_stride}")
        self._norm_layer = nn.BatchNorm2d
        self.groups, self.base_width, self.dilation = 1, 64, 1
        planes = [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]
        if deep_stem:
            self.inplanes = 2 * planes[0]
            self.conv1 = nn.Sequential(
                conv3x3(3, planes[0], stride=2), nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True),
                conv3x3(planes[0], planes[0]), nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True),
                conv3x3(planes[0], self.inplanes))
        else:
            self.inplanes = planes[0]
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        dilate = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}[output_stride]
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2, dilate=dilate[2])
        self.channels = (planes[2] * block.expansion, planes[3] * block.expansion)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer3(self.layer2(self.layer1(x)))
        return c3, self.layer4(c3)


class DilatedMobileNetV2(nn.Module):
    """torchvision's MobileNetV2 features up to the 320-channel block (no 1280-channel conv), with
    the strides of the last stages turned into dilation for output stride 8 or 16, as the CIRKD
    student does (models/base_models/mobilenetv2.py, after CSAIL's ``_nostride_dilate``): at OS 8
    blocks 7-13 get dilation 2 and blocks 14-17 dilation 4, each stride-2 conv becoming a stride-1
    conv with half the stage's dilation. Parameter names are torchvision's (``features.N``), so its
    ImageNet weights load. Returns (block 13 output, 96 ch; block 17 output, 320 ch).
    """

    def __init__(self, width: float = 1.0, output_stride: int = 8):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride: expected 8, 16 or 32, got {output_stride}")
        self.features = mobilenet_v2(width_mult=width).features[:18]
        stages = {8: ((7, 14, 2), (14, 18, 4)), 16: ((14, 18, 2),), 32: ()}[output_stride]
        for start, stop, dilation in stages:
            for block in self.features[start:stop]:
                for conv in block.modules():
                    if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                        d = dilation // 2 if conv.stride == (2, 2) else dilation
                        conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        self.channels = (self.features[13].out_channels, self.features[17].out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c3 = self.features[:14](x)
        return c3, self.features[14:](c3)


class PSPHead(nn.Module):
    """Pyramid pooling (bins 1, 2, 3, 6) + 3x3 fusion conv; returns the pre-classifier feature."""

    def __init__(self, in_channels: int, out_channels: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        reduced = max(1, in_channels // len(bins))
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, reduced, 1, bias=False),
                          nn.BatchNorm2d(reduced), nn.ReLU(inplace=True)) for b in bins)
        self.fuse = nn.Sequential(
            nn.Conv2d(in_channels + reduced * len(bins), out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pyramid = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return self.fuse(torch.cat([x, *pyramid], dim=1))


class ASPPHead(nn.Module):
    """torchvision's ASPP + 3x3 conv (DeepLabV3 head without its classifier)."""

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = (12, 24, 36)):
        super().__init__()
        self.aspp = ASPP(in_channels, list(rates), out_channels)
        self.conv = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.aspp(x))


class Segmentor(nn.Module):
    """Backbone + head + classifier (+ auxiliary FCN head on layer3)."""

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        if cfg.backbone == "mobilenet_v2":
            self.backbone: nn.Module = DilatedMobileNetV2(cfg.width, cfg.output_stride)
        else:
            block = {"basic": DilatedBasicBlock, "bottleneck": Bottleneck}[cfg.block]
            self.backbone = DilatedResNet(block, cfg.layers, cfg.width, cfg.deep_stem, cfg.output_stride)
        c3, c4 = self.backbone.channels
        if cfg.head == "psp":
            self.head: nn.Module = PSPHead(c4, cfg.head_channels, cfg.psp_bins)
        else:
            self.head = ASPPHead(c4, cfg.head_channels, cfg.aspp_rates)
        self.dropout = nn.Dropout2d(cfg.dropout)
        self.classifier = nn.Conv2d(cfg.head_channels, num_classes, 1)
        self.aux = FCNHead(c3, num_classes) if cfg.aux else None
        self.feature_channels = cfg.head_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c3, c4 = self.backbone(x)
        feat = self.head(c4)
        out = {"out": self.classifier(self.dropout(feat)), "feat": feat}
        if self.aux is not None and self.training:
            out["aux"] = self.aux(c3)
        return out


def build_segmentor(cfg: ModelConfig, num_classes: int, pretrained: bool = False) -> Segmentor:
    """The configured network; ``pretrained`` initialises the backbone from ``cfg.pretrained``
    (training start only: a trained model is loaded over it, see :mod:`.pretrained`)."""
    if cfg.backbone not in ("resnet", "mobilenet_v2"):
        raise ValueError(f"model.backbone: expected 'resnet' or 'mobilenet_v2', got {cfg.backbone!r}")
    if cfg.block not in ("basic", "bottleneck"):
        raise ValueError(f"model.block: expected 'basic' or 'bottleneck', got {cfg.block!r}")
    if cfg.head not in ("psp", "aspp"):
        raise ValueError(f"model.head: expected 'psp' or 'aspp', got {cfg.head!r}")
    model = Segmentor(cfg, num_classes)
    if pretrained and cfg.pretrained:
        load_backbone_weights(model.backbone, cfg)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
