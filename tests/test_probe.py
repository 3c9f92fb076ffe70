"""The position probe (idd_lib.probe) and the position-prior sweep's profiles."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from idd_lib import presets, probe, runs
from idd_lib.losses import position_targets

H, W = 8, 16


def fourier_encoding(n: int, channels: int = 48, noise: int = 8, seed: int = 0) -> torch.Tensor:
    """An explicit coordinate encoding: random Fourier features of (x, y), the same in every
    image (fixed frequencies), plus per-image noise channels drawn with ``seed``."""
    g = torch.Generator().manual_seed(1234)
    xy = position_targets(("x", "y"), (H, W))
    omega = torch.randn(channels, 2, generator=g) * 2.0
    phase = torch.rand(channels, 1, 1, generator=g) * 2 * math.pi
    code = torch.cos(torch.einsum("dp,phw->dhw", omega, xy) + phase)
    g = torch.Generator().manual_seed(seed)
    return torch.cat([code.expand(n, -1, -1, -1), torch.randn(n, noise, H, W, generator=g)], 1)


def per_image_constants(n: int, channels: int = 32, seed: int = 0) -> torch.Tensor:
    """Translation-invariant features: one random vector per image, the same at every position."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, 1, 1, generator=g).expand(n, channels, H, W).contiguous()


def test_probe_reads_an_explicit_coordinate_encoding():
    scores = probe.probe_r2(fourier_encoding(12, seed=0), fourier_encoding(6, seed=1))
    assert set(scores) == {"x", "y", "gaussian", "mean"}
    assert all(scores[k] >= 0.9 for k in scores), scores


def test_probe_finds_nothing_in_translation_invariant_features():
    scores = probe.probe_r2(per_image_constants(12, seed=0), per_image_constants(6, seed=1))
    assert all(abs(v) < 0.1 for v in scores.values()), scores
    constant = torch.ones(6, 4, H, W)                          # also with no variation at all
    assert abs(probe.probe_r2(constant, constant[:3])["mean"]) < 0.1


def test_probe_credits_linear_coordinates_exactly_and_is_linear():
    xy = position_targets(("x", "y"), (H, W)).expand(4, -1, -1, -1)
    scores = probe.probe_r2(xy, xy[:2])
    assert scores["x"] > 0.99 and scores["y"] > 0.99
    assert scores["gaussian"] < 0.9                            # a non-linear map of x, y: only partly


def test_patches_use_replicate_padding_and_validate():
    features = torch.arange(2 * 3 * H * W, dtype=torch.float32).reshape(2, 3, H, W)
    rows = probe.patches(features, 3)
    assert rows.shape == (2 * H * W, 3 * 9)
    centre = rows[:, [c * 9 + 4 for c in range(3)]]            # the middle of each 3x3 window
    np.testing.assert_array_equal(centre, features.permute(0, 2, 3, 1).reshape(-1, 3).numpy())
    constant = probe.patches(torch.full((1, 2, H, W), 3.0))
    assert (constant == 3.0).all()                             # no zeros from padding at the border
    with pytest.raises(ValueError, match="kernel"):
        probe.patches(features, 2)
    with pytest.raises(ValueError, match="features"):
        probe.patches(features[0])
    with pytest.raises(ValueError, match="val_features"):
        probe.probe_r2(features, features[:, :2])
    with pytest.raises(ValueError, match="alpha"):
        probe.fit_probe(features, alpha=0)


class EncodingModel(torch.nn.Module):
    """A stand-in network whose ``feat`` is either a coordinate encoding or its input's global colour."""

    def __init__(self, positional: bool):
        super().__init__()
        self.positional = positional
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        n = len(x)
        if self.positional:
            return {"feat": self.scale * fourier_encoding(n, seed=0)[:, :48]}
        return {"feat": self.scale * x.mean((2, 3), keepdim=True).expand(n, 3, H, W)}


def test_probe_networks_end_to_end_and_mode_kept():
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(3, 2 * H, 2 * W, generator=g), torch.zeros(2 * H, 2 * W, dtype=torch.long))
            for _ in range(10)]
    models = {"coords": EncodingModel(True).train(), "colour": EncodingModel(False)}
    scores = probe.probe_networks(models, data[:7], data[7:])
    assert scores["coords"]["mean"] >= 0.9 and abs(scores["colour"]["mean"]) < 0.1
    assert models["coords"].training
    assert probe.feature_maps(models["colour"], data, max_images=4).shape == (4, 3, H, W)


def test_default_sweep_keeps_the_profiles_sizes_and_teacher():
    base = presets.get_profile("default")
    at_prior_one, flat = base.sweep_profile(1.0), base.sweep_profile(0.0)
    assert at_prior_one.name == base.name and at_prior_one.data == base.data  # the profile's own runs
    assert at_prior_one.teacher_config().digest() == base.teacher_config().digest()
    assert runs.run_dir(at_prior_one, runs.student_config(at_prior_one, "idd", 0)) == runs.run_dir(
        base, runs.student_config(base, "idd", 0))
    assert flat.data.synthetic == dataclasses.replace(base.data.synthetic, position_prior=0.0)
    assert (flat.teacher_train, flat.student_train) == (base.teacher_train, base.student_train)
    assert flat.methods == ("idd", "idd+pid") and len(flat.seeds) >= 3 and flat.name != base.name


def test_sweep_profiles_have_their_own_data_teacher_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("IDD_RESULTS", str(tmp_path))
    base = presets.get_profile("quick")
    swept = [base.sweep_profile(p) for p in base.sweep.priors]
    assert [s.data.synthetic.position_prior for s in swept] == list(base.sweep.priors)
    assert len({runs.teacher_dir(s) for s in swept}) == len(swept)
    for s in swept:
        assert s.seeds == base.sweep.seeds and s.methods == base.sweep.methods
        assert (s.data.synthetic.height, s.data.synthetic.width) == (base.sweep.height, base.sweep.width)
        assert s.teacher_train.iterations == base.sweep.teacher_iterations
        folder = runs.run_dir(s, runs.student_config(s, "pid", 0))
        assert folder.is_relative_to(tmp_path / "quick" / "sweep")
    assert runs.teacher_dir(base.sweep_profile(base.data.synthetic.position_prior)) != runs.teacher_dir(base)
    with pytest.raises(ValueError, match="position_prior"):
        base.sweep_profile(3.0)
    real = dataclasses.replace(base, data=dataclasses.replace(base.data, dataset="cityscapes"))
    with pytest.raises(ValueError, match="synthetic"):
        real.sweep_profile(1.0)
