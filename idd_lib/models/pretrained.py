"""ImageNet initialisation of the backbones: torchvision's weights or a local file.

Torchvision's weights are downloaded once into torch.hub's cache; every file is read with
``torch.load(..., weights_only=True)``.


``model.pretrained``: ``""`` no initialisation, ``"imagenet"`` torchvision's ImageNet-1k weights
for the matching architecture, or a path to a state dict (torchvision naming, or the deep-stem
naming of the lineage's ``resnet18-imagenet.pth`` / ``resnet101-imagenet.pth`` files that SKD
and CIRKD distribute, whose ``conv1/bn1/conv2/bn2/conv3/bn3`` stem is renamed to ours).
"""
from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from ..config import ModelConfig
from ..paths import project_root

# (block, layers) -> torchvision weights; V1 = the original ImageNet training the lineage used
RESNET_WEIGHTS = {
    ("basic", (2, 2, 2, 2)): models.ResNet18_Weights.IMAGENET1K_V1,
    ("basic", (3, 4, 6, 3)): models.ResNet34_Weights.IMAGENET1K_V1,
    ("bottleneck", (3, 4, 6, 3)): models.ResNet50_Weights.IMAGENET1K_V1,
    ("bottleneck", (3, 4, 23, 3)): models.ResNet101_Weights.IMAGENET1K_V1,
    ("bottleneck", (3, 8, 36, 3)): models.ResNet152_Weights.IMAGENET1K_V1,
}
MOBILENET_V2_WEIGHTS = models.MobileNet_V2_Weights.IMAGENET1K_V1

# Deep-stem files of the lineage (CSAIL resnetXX-imagenet.pth) -> our DilatedResNet.conv1 Sequential
_DEEP_STEM_NAMES = {"conv1.": "conv1.0.", "bn1.": "conv1.1.", "conv2.": "conv1.3.", "bn2.": "conv1.4.",
                    "conv3.": "conv1.6.", "bn3.": "bn1."}
# Keys of an ImageNet checkpoint that a segmentation backbone does not use
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "features.18.", "num_batches_tracked")


def torchvision_weights(cfg: ModelConfig) -> models.WeightsEnum:
    """The torchvision ImageNet weights of ``cfg``'s backbone, or a ValueError saying why there are none."""
    if cfg.backbone == "mobilenet_v2":
        if cfg.width != 1.0:
            raise ValueError(f"model.pretrained=imagenet: torchvision has MobileNetV2 weights for width 1 only, "
                             f"not model.width={cfg.width}")
        return MOBILENET_V2_WEIGHTS
    if cfg.deep_stem:
        raise ValueError("model.pretrained=imagenet: torchvision has no ImageNet weights for deep-stem ResNets "
                         "(the three-3x3-conv stem of the PSPNet lineage); give the lineage's file instead, "
                         "e.g. model.pretrained=/path/to/resnet18-imagenet.pth (the deep-stem weights SKD and "
                         "CIRKD distribute), or use model.deep_stem=false with model.pretrained=imagenet")
    weights = RESNET_WEIGHTS.get((cfg.block, tuple(cfg.layers)))
    if weights is None or cfg.width != 1.0:
        raise ValueError(f"model.pretrained=imagenet: torchvision has no ImageNet weights for a {cfg.block} "
                         f"ResNet with layers {tuple(cfg.layers)} and width {cfg.width}; expected one of "
                         f"{sorted(layers for _, layers in RESNET_WEIGHTS)} at width 1")
    return weights


def download_state_dict(weights: models.WeightsEnum) -> dict[str, torch.Tensor]:
    """torchvision's file through torch.hub's cache (no network when the file is already there)."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    filename = weights.url.rsplit("/", 1)[-1]
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError) as err:
        raise RuntimeError(f"model.pretrained=imagenet: could not download {weights.url} ({err}). Without internet, "
                           f"download that file elsewhere and put it at {hub / filename} (torch.hub's cache; "
                           f"TORCH_HOME moves it), or set model.pretrained=/path/to/{filename}") from None


def require_weights_file(path: str | Path, option: str = "model.pretrained") -> Path:
    """The file a ``pretrained`` path names (a relative one is also looked up in the project, where
    the presets' ``pretrained/...`` lives); ``option`` names the setting in the error."""
    path = Path(path)
    if not path.is_absolute() and not path.is_file():
        path = project_root() / path
    if not path.is_file():
        raise FileNotFoundError(f"{option}: {path} is not a file; expected a state dict (.pth) there "
                                "(e.g. the deep-stem resnet18-imagenet.pth / resnet101-imagenet.pth the SKD and "
                                f"CIRKD READMEs link), 'imagenet' for torchvision's weights, or {option}= for none")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file: plain, or under a ``state_dict``/``model`` key; ``module.`` prefixes dropped."""
    path = require_weights_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"model.pretrained: {path} is not a plain state dict of tensors "
                         f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"model.pretrained: {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _rename_deep_stem(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "conv2.weight" not in state:  # already our naming (or a plain stem)
        return state
    renamed = {}
    for key, value in state.items():
        prefix = next((p for p in _DEEP_STEM_NAMES if key.startswith(p)), None)
        renamed[_DEEP_STEM_NAMES[prefix] + key[len(prefix):] if prefix else key] = value
    return renamed


def load_backbone_weights(backbone: nn.Module, cfg: ModelConfig) -> None:
    """Initialise ``backbone`` from ``cfg.pretrained``; every backbone weight must be covered."""
    if cfg.pretrained == "imagenet":
        source, state = "imagenet", download_state_dict(torchvision_weights(cfg))
    else:
        source, state = cfg.pretrained, read_state_dict(cfg.pretrained)
    if cfg.backbone == "resnet" and cfg.deep_stem:
        state = _rename_deep_stem(state)
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise ValueError(f"model.pretrained: {source} does not fit this backbone ({detail})") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"model.pretrained: {source} does not fit this backbone: {len(missing)} weights missing "
                         f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
