"""Defining properties of the baseline KD terms (docs/baselines.md) and a 2-step run of every method."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from idd_lib import engine, runs
from idd_lib.losses.adversarial import HolisticAdversarialLoss
from idd_lib.config import AdversarialConfig, CIRKDConfig, CWDConfig, LossConfig, PairwiseConfig
from idd_lib.data.datasets import dataset_spec
from idd_lib.losses import (METHODS, TERM_BUILDERS, ChannelWiseDistillation, CrossImageMemoryLoss,
                            CrossImagePixelLoss, DistillationCriterion, IntraClassFeatureVariationLoss,
                            PairwiseAffinityLoss, method_weights)
from idd_lib.models import build_segmentor
from idd_lib.presets import get_profile

K = 5
ROOT = Path(__file__).resolve().parents[1]
SMALL_MEMORY = CIRKDConfig(pixel_memory=64, region_memory=8, pixel_contrast=16, region_contrast=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _labels(b=3, h=8, w=12, seed=0):
    labels = torch.randint(0, K, (b, h, w), generator=torch.Generator().manual_seed(seed))
    labels[:, 0, :3] = 255
    return labels


def _feat(b=3, c=6, h=8, w=12, seed=1):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _rotation(c, seed=3):
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=torch.Generator().manual_seed(seed)))
    return q


def _rotate(f, q):
    return torch.einsum("dc,bchw->bdhw", q, f)


def _feat_terms(term, f_s, f_t, labels=None):
    return term({"feat": f_s}, {"feat": f_t}, _labels() if labels is None else labels)


# ---------------------------------------------------------------- SKD pair-wise

@pytest.mark.parametrize("variant", ["cirkd", "skd"])
def test_pa_zero_for_equal_features_and_invariant_to_channel_rotation(variant):
    pa = PairwiseAffinityLoss(PairwiseConfig(variant=variant))
    f_t = _feat(c=6, seed=1)
    assert _feat_terms(pa, f_t.clone(), f_t).item() == pytest.approx(0, abs=1e-10)
    # max-pooling commutes with a channel permutation for any input...
    f_s = _feat(c=6, seed=2)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_feat_terms(pa, f_s[:, perm], f_t), _feat_terms(pa, f_s, f_t), atol=1e-6)
    # ...and with any rotation when features are constant inside the pooling windows (4x6 blocks
    # hold whole windows of both variants: 2x2, and the skd kernel of half of 8x12)
    blocky = F.interpolate(_feat(c=6, h=2, w=2, seed=4), scale_factor=(4, 6), mode="nearest")
    rotated = _rotate(blocky, _rotation(6))
    assert not torch.allclose(rotated, blocky)
    assert torch.allclose(_feat_terms(pa, rotated, f_t), _feat_terms(pa, blocky, f_t), atol=1e-5)
    assert _feat_terms(pa, blocky, f_t).item() > 1e-3


def test_pa_variants_build_the_lineages_graphs_and_accept_other_widths():
    f = _feat(c=6, h=8, w=12)
    assert PairwiseAffinityLoss(PairwiseConfig("cirkd")).affinity(f).shape == (3, 24, 24)   # 2x2 pooled nodes
    assert PairwiseAffinityLoss(PairwiseConfig("skd", 0.5)).affinity(f).shape == (3, 4, 4)  # kernel = half the map
    affinity = PairwiseAffinityLoss(PairwiseConfig("cirkd")).affinity(f)
    assert torch.allclose(affinity.diagonal(dim1=1, dim2=2), torch.ones(3, 24), atol=1e-5)  # cosine graph
    narrow = _feat(c=3, h=4, w=6, seed=5).requires_grad_()   # other width and size: resized, no adapter
    teacher = _feat(c=6, seed=1).requires_grad_()
    loss = _feat_terms(PairwiseAffinityLoss(PairwiseConfig()), narrow, teacher)
    loss.backward()
    assert loss > 0 and narrow.grad.abs().sum() > 0 and teacher.grad is None
    with pytest.raises(ValueError, match="pa.variant"):
        PairwiseAffinityLoss(PairwiseConfig(variant="dense"))


# ---------------------------------------------------------------- IFVD

def reference_ifv(f_s, f_t, labels):
    """IFVD's class loop (utils/criterion.py CriterionIFV), averaged over labelled pixels."""
    maps = []
    for f in (f_s, f_t):
        centre = f.clone()
        for k in range(K):
            mask = (labels == k).float()[:, None]
            mean = (mask * f).sum((2, 3), keepdim=True) / (mask.sum((2, 3), keepdim=True) + 1e-6)
            centre = (1 - mask) * centre + mask * mean
        maps.append(F.cosine_similarity(f, centre, dim=1))
    valid = labels != 255
    return (maps[0] - maps[1])[valid].square().mean()


def test_ifv_matches_ifvds_class_loop_and_is_zero_for_equal_features():
    ifv = IntraClassFeatureVariationLoss(K)
    labels, f_t, f_s = _labels(), _feat(seed=1), _feat(seed=2)
    assert torch.allclose(_feat_terms(ifv, f_s, f_t, labels), reference_ifv(f_s, f_t, labels), atol=1e-5)
    assert _feat_terms(ifv, f_t.clone(), f_t, labels).item() == pytest.approx(0, abs=1e-10)


def test_ifv_invariances_ignore_and_widths():
    ifv = IntraClassFeatureVariationLoss(K)
    labels, f_t, f_s = _labels(), _feat(seed=1), _feat(seed=2)
    base = _feat_terms(ifv, f_s, f_t, labels)
    assert torch.allclose(_feat_terms(ifv, 3.0 * f_s, f_t, labels), base, atol=1e-5)            # scale
    assert torch.allclose(_feat_terms(ifv, _rotate(f_s, _rotation(6)), f_t, labels), base, atol=1e-5)
    moved = f_s.clone()
    moved[:, :, 0, :3] = 100.0                                                            # ignored pixels only
    assert torch.allclose(_feat_terms(ifv, moved, f_t, labels), base, atol=1e-6)
    wide = torch.cat([f_s, torch.zeros(3, 10, 8, 12)], 1)                                  # more channels, same geometry
    assert torch.allclose(_feat_terms(ifv, wide, f_t, labels), base, atol=1e-6)
    f_s.requires_grad_()
    f_t.requires_grad_()
    _feat_terms(ifv, f_s, f_t, labels).backward()
    assert f_s.grad.abs().sum() > 0 and f_t.grad is None


# ---------------------------------------------------------------- CWD

def reference_cwd(y_s, y_t, t):
    total = 0.0
    for n in range(y_s.shape[0]):  # every image of the batch, unlike the peers' first-image bug
        for c in range(y_s.shape[1]):
            p_t = F.softmax(y_t[n, c].flatten() / t, 0)
            total = total + (p_t * (p_t.log() - F.log_softmax(y_s[n, c].flatten() / t, 0))).sum()
    return t * t * total / (y_s.shape[0] * y_s.shape[1])


def test_cwd_formula_uses_every_image_and_is_spatially_permutation_invariant():
    cwd = ChannelWiseDistillation(CWDConfig(temperature=4.0))
    y_t, y_s = _feat(c=K, seed=1), _feat(c=K, seed=2)
    value = cwd({"out": y_s}, {"out": y_t}, _labels())
    assert torch.allclose(value, reference_cwd(y_s, y_t, 4.0), atol=1e-6)
    assert cwd({"out": y_t.clone()}, {"out": y_t}, _labels()).item() == pytest.approx(0, abs=1e-10)
    other = y_s.clone()
    other[1:] = y_t[1:]                                  # only images 1.. change: the loss must see them
    assert not torch.allclose(cwd({"out": other}, {"out": y_t}, _labels()), value)
    perm = torch.randperm(8 * 12, generator=torch.Generator().manual_seed(0))
    shuffle = lambda y: y.flatten(2)[..., perm].view_as(y)  # noqa: E731 - same permutation for both
    assert torch.allclose(cwd({"out": shuffle(y_s)}, {"out": shuffle(y_t)}, _labels()), value, atol=1e-6)


def test_cwd_feat_adapter_only_when_widths_differ_and_gradients_reach_it():
    same = ChannelWiseDistillation(CWDConfig(), "feat", 6, 6)
    assert same.adapter is None
    cwd = ChannelWiseDistillation(CWDConfig(), "feat", 3, 6)
    f_s, f_t = _feat(c=3, seed=2).requires_grad_(), _feat(c=6, seed=1).requires_grad_()
    cwd({"feat": f_s}, {"feat": f_t}, _labels()).backward()
    assert cwd.adapter.weight.grad.abs().sum() > 0 and f_s.grad.abs().sum() > 0 and f_t.grad is None


# ---------------------------------------------------------------- CIRKD

def reference_minibatch(f_s, f_t, tau=0.1):
    """CIRKD's loop over image pairs (losses/cirkd_mini_batch.py)."""
    f_s, f_t = F.normalize(f_s, dim=1), F.normalize(f_t, dim=1)
    b, total = f_s.shape[0], 0.0
    for i in range(b):
        for j in range(b):
            s = f_s[i].flatten(1).T @ f_s[j].flatten(1)
            t = f_t[i].flatten(1).T @ f_t[j].flatten(1)
            total = total + F.kl_div(F.log_softmax(s / tau, 1), F.softmax(t / tau, 1), reduction="batchmean")
    return total / b ** 2


def test_cirkd_minibatch_matches_pair_loop_and_is_cross_image():
    mb = CrossImagePixelLoss(CIRKDConfig())
    f_t, f_s = _feat(c=6, seed=1), _feat(c=4, seed=2)
    assert torch.allclose(_feat_terms(mb, f_s, f_t), reference_minibatch(f_s, f_t), rtol=1e-4)
    assert _feat_terms(mb, f_t.clone(), f_t).item() == pytest.approx(0, abs=1e-8)
    assert torch.allclose(_feat_terms(mb, _rotate(f_s, _rotation(4)), f_t), _feat_terms(mb, f_s, f_t), rtol=1e-4)
    # a different rotation per image keeps every image's own graph but changes the cross-image ones
    per_image = torch.stack([_rotate(f_t[b:b + 1], _rotation(6, seed=b))[0] for b in range(3)])
    alone = [_feat_terms(mb, per_image[b:b + 1], f_t[b:b + 1]).item() for b in range(3)]
    assert max(alone) == pytest.approx(0, abs=1e-6)
    assert _feat_terms(mb, per_image, f_t).item() > 1e-2


def test_cirkd_memory_enqueues_teacher_pixels_and_regions_per_class():
    cfg = dataclasses.replace(SMALL_MEMORY, pixel_memory=200, pixels_per_class=1000)
    mem = CrossImageMemoryLoss(K, 4, 6, cfg)
    labels, f_t = _labels(b=2), F.normalize(_feat(b=2, seed=1), dim=1)
    mem.enqueue(f_t, labels)
    pixels = f_t.permute(0, 2, 3, 1)
    for k in range(K):  # test-side loop over classes: every pixel of class k, in the queue of class k
        expected = pixels[labels == k]
        count = len(expected)
        assert int(mem.pixel_ptr[k]) == count
        stored = mem.pixel_queue[k, :count]
        assert torch.allclose(torch.sort(stored, 0).values, torch.sort(expected, 0).values, atol=1e-6)
        means = torch.stack([F.normalize(pixels[b][labels[b] == k].mean(0), dim=0) for b in range(2)])
        assert torch.allclose(mem.region_queue[k, :2], means, atol=1e-5) and int(mem.region_ptr[k]) == 2


def test_cirkd_memory_is_a_ring_buffer_keeping_the_newest():
    cfg = dataclasses.replace(SMALL_MEMORY, pixel_memory=5, pixels_per_class=3)
    mem = CrossImageMemoryLoss(K, 4, 6, cfg)
    labels = torch.zeros(3, 4, 4, dtype=torch.long)                 # one class, 3 images x 3 pixels = 9 > 5
    f_t = F.normalize(_feat(b=3, h=4, w=4, seed=1), dim=1)
    mem.enqueue(f_t, labels)
    assert int(mem.pixel_ptr[0]) == 9 % 5
    last_image = f_t[2].flatten(1).T                                 # the newest entries are image 2's
    stored = mem.pixel_queue[0]
    matches = (torch.cdist(stored, last_image) < 1e-5).any(1)
    assert int(matches.sum()) == 3
    assert int(mem.pixel_ptr[1:].sum()) == 0                       # other classes untouched


def test_cirkd_memory_gradients_and_ignored_anchors():
    mem = CrossImageMemoryLoss(K, 4, 6, SMALL_MEMORY).eval()      # eval: BN statistics fixed
    labels = _labels()
    f_s, f_t = _feat(c=4, seed=2).requires_grad_(), _feat(c=6, seed=1).requires_grad_()
    torch.manual_seed(0)
    value = _feat_terms(mem, f_s, f_t, labels)
    value.backward()
    assert value > 0 and f_s.grad.abs().sum() > 0 and f_t.grad is None
    assert all(p.grad is not None for p in mem.project.parameters())
    assert not mem.pixel_queue.requires_grad
    assert f_s.grad[:, :, 0, :3].abs().sum() == 0                  # ignored pixels are no anchors
    s = F.normalize(torch.randn(7, 6), dim=1)
    assert mem._contrast_kd(s, s, F.normalize(torch.randn(9, 6), dim=1), torch.ones(7)).item() == \
        pytest.approx(0, abs=1e-6)


# ---------------------------------------------------------------- SKD holistic (adversarial)

def _logit_outs(seed=0):
    s = {"out": _feat(c=K, seed=seed + 2).requires_grad_()}
    t = {"out": _feat(c=K, seed=seed + 1).requires_grad_()}
    return s, t


@pytest.mark.parametrize("loss", ["wgan-gp", "hinge"])
def test_ho_generator_term_moves_the_student_only(loss):
    ho = HolisticAdversarialLoss(K, AdversarialConfig(loss=loss))
    s, t = _logit_outs()
    ho(s, t, _labels()).backward()
    assert s["out"].grad.abs().sum() > 0 and t["out"].grad is None
    assert all(p.grad is None for p in ho.discriminator.parameters())
    assert all(p.requires_grad for p in ho.discriminator.parameters())


def test_ho_discriminator_learns_with_its_own_adam_and_its_state_is_saved():
    torch.manual_seed(0)
    crit = DistillationCriterion(LossConfig("ho"), K, 4, 6)
    ho = crit.terms["ho"]
    disc = set(map(id, ho.discriminator.parameters()))
    assert disc and not disc & set(map(id, crit.student_parameters()))
    s = {"out": _feat(c=K, seed=2) * 0.1, "feat": _feat(c=4)}
    t = {"out": _feat(c=K, seed=1) * 3, "feat": _feat()}
    labels = _labels()
    with torch.no_grad():
        gap0 = (ho.discriminator.eval()(t["out"]) - ho.discriminator(s["out"])).mean()
    ho.discriminator.train()
    before = [p.detach().clone() for p in ho.discriminator.parameters()]
    logs = [crit.update(s, t, labels)["ho_d"] for _ in range(15)]
    assert all(torch.isfinite(v) for v in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, ho.discriminator.parameters()))
    with torch.no_grad():
        gap = (ho.discriminator.eval()(t["out"]) - ho.discriminator(s["out"])).mean()
    assert gap > gap0 + 0.1                          # the critic now scores the teacher higher
    assert isinstance(ho.optimizer, torch.optim.Adam) and ho.optimizer.defaults["lr"] == 4e-4
    state = crit.state_dict()
    fresh = DistillationCriterion(LossConfig("ho"), K, 4, 6)
    fresh.load_state_dict(state)
    a, b = ho.optimizer.state_dict()["state"], fresh.terms["ho"].optimizer.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)


def test_ho_with_image_input_needs_the_images():
    crit = DistillationCriterion(LossConfig("ho", ho=AdversarialConfig(input="image+logits")), K, 4, 6)
    s, t = _logit_outs()
    images = torch.randn(3, 3, 64, 96)
    total, values = crit(s, t, _labels(), images)
    assert torch.isfinite(values["ho"]) and crit.terms["ho"].discriminator.net[0].num_features == K + 3
    with pytest.raises(ValueError, match="ho.input=image\\+logits needs the images"):
        crit(s, t, _labels())


# ---------------------------------------------------------------- registry and training

def test_registry_recipes_and_weights():
    for method in METHODS.values():
        assert set(method.weights) <= set(TERM_BUILDERS), method.name
    assert method_weights(LossConfig("skd")) == {"ce": 1.0, "kd": 1.0, "pa": 10.0, "ho": 0.001}
    assert method_weights(LossConfig("ifvd")) == {"ce": 1.0, "kd": 0.53, "ifv": 200.0, "ho": 0.001}
    assert method_weights(LossConfig("cwd")) == {"ce": 1.0, "cwd": 3.0}
    assert method_weights(LossConfig("cirkd")) == {"ce": 1.0, "kd": 1.0, "cirkd-mb": 1.0, "cirkd-mem": 0.1}
    for term in ("pa", "ho", "ifv", "cwd", "cwd-feat", "cirkd-mb", "cirkd-mem"):
        assert set(METHODS[term].weights) == {"ce", term}       # each term alone
    assert CWDConfig().temperature == 4.0 and AdversarialConfig().gp_weight == 10.0


@pytest.fixture(scope="module")
def zoo_results(tmp_path_factory):
    """One results folder for the module: the tiny teacher is trained once for every method."""
    return tmp_path_factory.mktemp("zoo_results")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_two_steps(method, tiny_profile, zoo_results, monkeypatch):
    monkeypatch.setenv("IDD_RESULTS", str(zoo_results))
    profile = dataclasses.replace(tiny_profile, student_train=dataclasses.replace(
        tiny_profile.student_train, iterations=2, log_every=1))
    options = {"loss.cirkd.pixel_memory": "64", "loss.cirkd.region_memory": "8"} if "cirkd" in method else None
    result = runs.run_student(profile, method, 0, options=options, progress=False)
    rows = [r for r in runs.read_metrics(result["run_dir"]) if "loss/total" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert {f"loss/{t}" for t in METHODS[method].weights} <= set(rows[-1])
    if "ho" in METHODS[method].weights:
        assert "loss/ho_d" in rows[-1]
    state = engine.load_state(engine.Path(result["run_dir"]) / engine.CHECKPOINT)   # weights_only
    cfg = runs.student_config(profile, method, 0, options=options)
    model = engine.load_model(result["run_dir"], cfg)
    crit = DistillationCriterion(cfg.loss, 9, model.feature_channels, profile.teacher.head_channels)
    sgd_params = sum(len(g["params"]) for g in state["optimizer"]["param_groups"])
    assert sgd_params == len(list(model.parameters())) + len(crit.student_parameters())
    if "ho" in METHODS[method].weights:       # the discriminator: in the checkpoint, not in the student's SGD
        assert len(crit.student_parameters()) < len(list(crit.parameters()))
        assert any(k.startswith("terms.ho.discriminator.") for k in state["criterion"])
        assert state["criterion"]["terms.ho._extra_state"]["optimizer"]["state"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_steps_under_the_cuda_settings(method, tiny_profile):
    """bf16 autocast and channels_last, the training loop's CUDA settings, here with CPU autocast:
    every method's step runs, its terms come out in fp32 and finite, and the student moves."""
    torch.manual_seed(0)
    k = dataset_spec(tiny_profile.data).num_classes
    cl = torch.channels_last
    student = build_segmentor(tiny_profile.student, k).to(memory_format=cl).train()
    teacher = build_segmentor(tiny_profile.teacher, k).to(memory_format=cl).eval().requires_grad_(False)
    crit = DistillationCriterion(LossConfig(method, cirkd=SMALL_MEMORY), k, student.feature_channels,
                                 teacher.feature_channels)
    images = torch.randn(2, 3, 32, 64).contiguous(memory_format=cl)
    labels = torch.randint(0, k, (2, 32, 64))
    optimizer = torch.optim.SGD([*student.parameters(), *crit.student_parameters()], lr=0.01)
    before = [p.detach().clone() for p in student.parameters()]
    for _ in range(2):
        loss, values = engine.training_step(student, teacher, crit, optimizer, images, labels, amp=True)
    assert torch.isfinite(loss) and set(METHODS[method].weights) <= set(values)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in values.values()), values
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


STUDY_METHODS = set(get_profile("quick").methods)   # their 02_distill runs are checked by the quick study


@pytest.fixture(scope="module")
def papermill_results(tmp_path_factory):
    return tmp_path_factory.mktemp("papermill_results")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(set(METHODS) - STUDY_METHODS))
def test_distill_notebook_runs_every_method_with_papermill(method, papermill_results, tmp_path):
    """`papermill notebooks/02_distill.ipynb out.ipynb -p method <m> -p profile quick` (2 iterations)."""
    env = {**os.environ, "IDD_RESULTS": str(papermill_results), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out.ipynb"
    done = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "02_distill.ipynb"), str(out),
                           "-p", "method", method, "-p", "profile", "quick", "-p", "progress", "False",
                           "-p", "options", "train.iterations=2"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads(out.read_text())["metadata"]["papermill"]
    assert meta["parameters"]["method"] == method
    result = next((papermill_results / "quick" / "runs").glob(f"{method}-train.iterations=2-s0-*/result.json"))
    assert json.loads(result.read_text())["steps"] == 2
