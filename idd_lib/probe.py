"""Position probe: how much absolute position a network's frozen features encode.

After Islam et al., "How Much Position Information Do CNNs Encode?" (ICLR 2020): a fresh
read-out is fitted on frozen features to regress position maps - here the maps PID distils
(:func:`idd_lib.losses.position_targets`: normalised x and y ramps and a centred Gaussian) - on
training images, and scored by R² on held-out images (per map, and their mean).

The read-out is linear on the k x k feature neighbourhood of each cell (k = 3, the receptive
field of the first layer of PID's read-out, :func:`idd_lib.losses.position_readout`), fitted
in closed form by ridge regression on standardised patches (scikit-learn). Why closed form and
not a trained conv read-out: no optimiser, seed or schedule can decide the result, a fit takes
well under a second per network on a CPU (the study probes a dozen networks), and a linear
probe measures what the features make available rather than what a non-linear probe can
compute on its own. The price: a map that is a non-linear function of the encoded position
(the Gaussian) is only credited as far as the features linearise it.

Patches use replicate padding. With zero padding the probe itself would see where the image
border is - the cue Islam et al. found networks exploit - and a translation-invariant feature
map would score above zero.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from .data.datasets import eval_loader
from .losses import position_targets

TARGETS = ("x", "y", "gaussian")


@torch.no_grad()
def feature_maps(model: nn.Module, dataset, max_images: int | None = None,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """Head features (``feat``) of the first ``max_images`` images of ``dataset``: N x C x h x w on
    the CPU. The model is evaluated in eval mode and left in the mode it came in. In a split of
    mixed image sizes every map is resized (bilinear) to the first one's size: the probe's targets
    are position maps in image-relative coordinates, which resizing keeps."""
    if len(dataset) == 0 or max_images == 0:
        raise ValueError("dataset: no images to probe")
    was_training = model.training
    model.eval().to(device)
    maps = [model(images.to(device))["feat"].float().cpu() for images, _ in eval_loader(dataset, max_images)]
    model.train(was_training)
    size = maps[0].shape[-2:]
    return torch.cat([m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                      for m in maps])


def patches(features: torch.Tensor, kernel: int = 3) -> np.ndarray:
    """Rows of ``kernel x kernel`` neighbourhoods, one per feature cell: (N h w) x (C k²), replicate-padded."""
    if features.ndim != 4 or len(features) == 0:
        raise ValueError(f"features: expected a non-empty N x C x h x w tensor, got shape {tuple(features.shape)}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel: expected an odd size >= 1, got {kernel}")
    pad = kernel // 2
    x = F.pad(features.float(), (pad, pad, pad, pad), mode="replicate") if pad else features.float()
    columns = F.unfold(x, kernel)                         # N x (C k²) x (h w)
    return columns.transpose(1, 2).reshape(-1, columns.shape[1]).numpy()


def position_matrix(names: Sequence[str], count: int, size: tuple[int, int]) -> np.ndarray:
    """The position maps of ``count`` images, row-aligned with :func:`patches`: (N h w) x P."""
    maps = position_targets(tuple(names), tuple(size))   # P x h x w
    return np.tile(maps.flatten(1).T.numpy(), (count, 1))


def fit_probe(features: torch.Tensor, names: Sequence[str] = TARGETS, alpha: float = 1e-2,
              kernel: int = 3) -> Pipeline:
    """Ridge read-out of the position maps from standardised patches of ``features`` (N x C x h x w).

    ``alpha`` is the penalty per training sample (sklearn's ``alpha`` is ``alpha * rows``), so its
    effect does not change with the number of images or the feature-map size.
    """
    if not alpha > 0:
        raise ValueError(f"alpha: the ridge penalty must be > 0, got {alpha}")
    x = patches(features, kernel)
    y = position_matrix(names, len(features), features.shape[-2:])
    return make_pipeline(StandardScaler(), Ridge(alpha=alpha * len(x))).fit(x, y)


def probe_r2(train_features: torch.Tensor, val_features: torch.Tensor, names: Sequence[str] = TARGETS,
             alpha: float = 1e-2, kernel: int = 3) -> dict[str, float]:
    """Fit on ``train_features``, score on ``val_features``: R² per position map and their ``mean``."""
    if train_features.ndim != 4 or val_features.ndim != 4 or train_features.shape[1] != val_features.shape[1]:
        raise ValueError(f"val_features: expected N x C x h x w with the training features' {train_features.shape[1]} "
                         f"channels, got shapes {tuple(train_features.shape)} and {tuple(val_features.shape)}")
    probe = fit_probe(train_features, names, alpha, kernel)
    truth = position_matrix(names, len(val_features), val_features.shape[-2:])
    scores = r2_score(truth, probe.predict(patches(val_features, kernel)), multioutput="raw_values")
    return {**{name: float(v) for name, v in zip(names, scores)}, "mean": float(np.mean(scores))}


def probe_networks(models: Mapping[str, nn.Module], train_set, val_set, max_images: int | None = None,
                   names: Sequence[str] = TARGETS, alpha: float = 1e-2, kernel: int = 3,
                   device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
    """R² of a fresh probe per network: fitted on ``train_set`` features, scored on ``val_set``."""
    return {name: probe_r2(feature_maps(model, train_set, max_images, device),
                           feature_maps(model, val_set, max_images, device), names, alpha, kernel)
            for name, model in models.items()}
