"""Defining properties of the losses (docs/method.md), each checked so that a wrong loss fails."""
import copy
import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from idd_lib.config import AfDCDConfig, IDDConfig, KDConfig, LossConfig, PIDConfig
from idd_lib.losses import (TERM_BUILDERS, DistillationCriterion, InterClassDistanceLoss, PixelwiseKD,
                            PositionDistillation, class_weights, method_weights)

K = 5


def _labels(b=3, h=8, w=12, seed=0, absent=(4,)):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (b, h, w), generator=g)
    for k in absent:
        labels[labels == k] = 0
    labels[:, 0, :3] = 255
    return labels


def _feat(b=3, c=6, h=8, w=12, seed=1):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def reference_idd(f_s, f_t, labels, metric="euclidean", normalize="mean", min_pixels=1):
    """Slow per-image, per-class loop version of steps 2-6 of the IDD loss in docs/method.md (nearest labels, same size)."""
    losses = []
    for b in range(labels.shape[0]):
        present = [k for k in range(K) if int((labels[b] == k).sum()) >= min_pixels]
        if len(present) < 2:
            continue
        mats = []
        for f in (f_t, f_s):
            centres = {k: f[b][:, labels[b] == k].mean(1) for k in present}
            pairs = list(itertools.combinations(present, 2))
            if metric == "euclidean":
                d = torch.stack([(centres[i] - centres[j]).norm() for i, j in pairs])
            elif metric == "sqeuclidean":
                d = torch.stack([(centres[i] - centres[j]).pow(2).sum() for i, j in pairs])
            else:
                d = torch.stack([1 - F.cosine_similarity(centres[i], centres[j], dim=0) for i, j in pairs])
            mats.append(d / d.mean() if normalize == "mean" else d)
        losses.append((mats[0] - mats[1]).pow(2).mean())
    return torch.stack(losses).mean()


def idd(f_s, f_t, labels, **options):
    return InterClassDistanceLoss(K, IDDConfig(**options))({"feat": f_s}, {"feat": f_t}, labels)


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "sqeuclidean"])
@pytest.mark.parametrize("normalize", ["mean", "none"])
def test_idd_matches_slow_reference(metric, normalize):
    labels, f_t, f_s = _labels(), _feat(c=6, seed=1), _feat(c=6, seed=2)
    expected = reference_idd(f_s, f_t, labels, metric, normalize)
    assert torch.allclose(idd(f_s, f_t, labels, metric=metric, normalize=normalize), expected, rtol=1e-4, atol=1e-6)


def test_idd_zero_when_student_equals_teacher():
    labels, f = _labels(), _feat()
    assert idd(f.clone(), f, labels).item() == pytest.approx(0.0, abs=1e-10)
    assert idd(_feat(seed=5), f, labels).item() > 1e-3


def test_idd_invariant_to_permuting_pixels_within_a_class():
    labels, f_t, f_s = _labels(b=1), _feat(b=1, seed=1), _feat(b=1, seed=2)
    permuted = f_s.clone().flatten(2)
    flat = labels.flatten()
    for k in labels.unique():  # test-side loop: builds the permuted input
        idx = (flat == k).nonzero().squeeze(1)
        permuted[0, :, idx] = permuted[0, :, idx[torch.randperm(len(idx))]]
    permuted = permuted.view_as(f_s)
    assert not torch.equal(permuted, f_s)
    assert torch.allclose(idd(permuted, f_t, labels), idd(f_s, f_t, labels), atol=1e-6)


def test_idd_ignores_255_and_absent_classes():
    labels, f_t, f_s = _labels(), _feat(seed=1), _feat(seed=2)
    base = idd(f_s, f_t, labels)
    changed = f_s.clone()
    changed[:, :, labels[0] == 255] = 0  # only ignored pixels move (image 0's pattern is shared)
    changed[:, :, 0, :3] = 1e3
    assert torch.allclose(idd(changed, f_t, labels), base, atol=1e-6)
    # class 4 is absent: a loss with K=5 equals the reference that never sees class 4
    assert torch.allclose(base, reference_idd(f_s, f_t, labels), atol=1e-6)


def test_idd_independent_of_student_channel_count():
    labels, f_t = _labels(), _feat(c=6)
    narrow = _feat(c=3, seed=7)
    wide = torch.cat([narrow, torch.zeros(3, 13, 8, 12)], 1)  # same geometry, more channels
    assert torch.allclose(idd(narrow, f_t, labels), idd(wide, f_t, labels), atol=1e-6)


def test_idd_resizes_student_to_teacher_and_supports_options():
    labels, f_t, f_s = _labels(h=16, w=24), _feat(h=8, w=12), _feat(h=4, w=6, seed=3)
    for options in ({"label_sampling": "soft"}, {"centres": "per-batch"}, {"penalty": "smooth-l1"}, {"min_pixels": 10}):
        value = idd(f_s, f_t, labels, **options)
        assert value.ndim == 0 and torch.isfinite(value) and value > 0


def test_idd_gradients_reach_student_only():
    labels = _labels()
    f_t = _feat(seed=1).requires_grad_()
    f_s = _feat(seed=2).requires_grad_()
    idd(f_s, f_t, labels).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0 and torch.isfinite(f_s.grad).all()
    assert f_t.grad is None


def test_idd_no_image_with_two_classes_gives_zero_not_nan():
    labels = torch.zeros(2, 8, 12, dtype=torch.long)
    value = idd(_feat(b=2), _feat(b=2, seed=3), labels)
    assert value.item() == 0.0


def test_soft_labels_are_area_fractions():
    labels = torch.tensor([[[0, 1], [1, 255]]])
    weights = class_weights(labels, 2, (1, 1), "soft")
    assert torch.allclose(weights[0, :, 0, 0], torch.tensor([0.25, 0.5]))


def test_kd_zero_for_equal_logits_and_masks_ignore():
    labels = _labels()
    z_t, z_s = _feat(c=K, seed=1), _feat(c=K, seed=2)
    kd = PixelwiseKD(KDConfig(temperature=2.0))
    assert kd({"out": z_t.clone()}, {"out": z_t}, labels).item() == pytest.approx(0, abs=1e-6)
    changed = z_s.clone()
    changed[:, :, 0, :3] = 50.0  # ignored pixels
    assert torch.allclose(kd({"out": changed}, {"out": z_t}, labels), kd({"out": z_s}, {"out": z_t}, labels))
    p_t = F.softmax(z_t / 2, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(z_s / 2, 1))).sum(1)
    assert torch.allclose(kd({"out": z_s}, {"out": z_t}, labels), 4 * kl[labels != 255].mean(), atol=1e-5)


@pytest.mark.parametrize("mode", ["readout", "probe"])
@pytest.mark.parametrize("hidden", [0, 16])
def test_pid_gradients_and_frozen_teacher_readout(mode, hidden):
    pid = PositionDistillation(4, 6, PIDConfig(mode=mode, hidden=hidden))
    f_s = _feat(c=4, seed=2).requires_grad_()
    f_t = _feat(c=6, seed=1).requires_grad_()
    pid({"feat": f_s}, {"feat": f_t}, _labels()).backward()
    assert f_s.grad.abs().sum() > 0 and f_t.grad is None
    # the student term must not move the teacher read-out: only its fit term does
    fit_only = PositionDistillation(4, 6, PIDConfig(mode=mode, hidden=hidden))
    fit_only.load_state_dict(pid.state_dict())
    pid.zero_grad()
    fit_only.zero_grad()
    pid({"feat": f_s}, {"feat": f_t}, _labels()).backward()
    from idd_lib.losses import position_targets
    target = position_targets(("x", "y", "gaussian"), (8, 12)).expand(3, -1, -1, -1)
    F.mse_loss(fit_only.teacher_readout(f_t.detach()), target).backward()
    for a, b in zip(pid.teacher_readout.parameters(), fit_only.teacher_readout.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_pid_prefit_fits_the_teacher_readout_first_then_keeps_it_frozen():
    from idd_lib.losses import position_targets
    cfg = PIDConfig(teacher_fit="prefit", prefit_steps=1, prefit_lr=1e-2)
    crit = DistillationCriterion(LossConfig("pid", pid=cfg), K, 4, 6)
    pid = crit.terms["pid"]
    f_s = _feat(c=4, seed=2).requires_grad_()
    f_t = _feat(c=6, seed=1)
    with pytest.raises(RuntimeError, match="not been pre-fitted"):
        pid({"feat": f_s}, {"feat": f_t}, _labels())
    assert set(crit.pending_prefits()) == {"pid"} and math.isnan(crit.prefit_losses()["pid_prefit"])
    target = position_targets(("x", "y", "gaussian"), (8, 12)).expand(3, -1, -1, -1)
    before = F.mse_loss(pid.teacher_readout(f_t), target).item()
    final = pid.prefit({"feat": f_t} for _ in range(60))
    assert final.item() < 0.5 * before and crit.prefit_losses() == {"pid_prefit": final.item()}
    assert not crit.pending_prefits() and pid.state_dict()["prefit_loss"] == final
    # after the fit: no fit term, the student matches the frozen read-out, which gets no gradient
    # and is not among what the student's optimiser trains
    value = pid({"feat": f_s}, {"feat": f_t}, _labels())
    with torch.no_grad():
        expected = F.mse_loss(pid.student_readout(f_s), pid.teacher_readout(f_t))
    assert torch.allclose(value, expected, atol=1e-6)
    value.backward()
    assert f_s.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in pid.teacher_readout.parameters())
    trained = {id(p) for p in crit.student_parameters()}
    assert not trained & {id(p) for p in pid.teacher_readout.parameters()}
    assert {id(p) for p in pid.student_readout.parameters()} <= trained
    for bad in ({"teacher_fit": "later"}, {"teacher_fit": "prefit", "prefit_steps": 0}):
        with pytest.raises(ValueError, match="pid.teacher_fit|pid.prefit_steps"):
            PositionDistillation(4, 6, PIDConfig(**bad))


def test_pid_single_conv_readout_value():
    """``hidden=0``: each read-out is one linear 3x3 conv, so the loss is two MSEs of plain convs."""
    from idd_lib.losses import position_targets
    pid = PositionDistillation(4, 6, PIDConfig(hidden=0))
    f_s, f_t = _feat(c=4, seed=2), _feat(c=6, seed=1)
    conv_s, conv_t = pid.student_readout[0], pid.teacher_readout[0]
    assert len(pid.student_readout) == len(pid.teacher_readout) == 1 and conv_t.out_channels == 3
    pos_t = F.conv2d(f_t, conv_t.weight, conv_t.bias, padding=1)
    target = position_targets(("x", "y", "gaussian"), (8, 12))
    expected = F.mse_loss(F.conv2d(f_s, conv_s.weight, conv_s.bias, padding=1), pos_t) + \
        F.mse_loss(pos_t, target.expand(3, -1, -1, -1))
    assert torch.allclose(pid({"feat": f_s}, {"feat": f_t}, _labels()), expected, atol=1e-6)
    with pytest.raises(ValueError, match="pid.hidden must be >= 0"):
        PositionDistillation(4, 6, PIDConfig(hidden=-1))


def test_registry_weights_and_validation():
    assert method_weights(LossConfig("idd")) == {"ce": 1.0, "kd": 1.0, "idd": 5.0}
    assert method_weights(LossConfig("idd", weights=(("idd", 0.0),))) == {"ce": 1.0, "kd": 1.0}
    with pytest.raises(ValueError, match="unknown loss term 'idx'"):
        method_weights(LossConfig("idd", weights=(("idx", 1.0),)))
    with pytest.raises(ValueError, match="unknown method 'ID D'"):
        method_weights(LossConfig("ID D"))
    with pytest.raises(ValueError, match="finite"):
        method_weights(LossConfig("idd", weights=(("idd", float("nan")),)))
    with pytest.raises(ValueError, match="idd.metric"):
        InterClassDistanceLoss(K, IDDConfig(metric="manhattan"))


def test_criterion_sums_weighted_terms():
    labels = _labels(h=16, w=24)
    s = {"out": _feat(c=K, seed=1), "aux": _feat(c=K, seed=2), "feat": _feat(c=4, seed=3)}
    t = {"out": _feat(c=K, seed=4), "feat": _feat(c=6, seed=5)}
    crit = DistillationCriterion(LossConfig("idd+pid", weights=(("idd", 2.0),)), K, 4, 6)
    total, values = crit(s, t, labels)
    assert set(values) == {"ce", "kd", "idd", "pid"}
    assert torch.allclose(total, values["ce"] + values["kd"] + 2 * values["idd"] + values["pid"])
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationCriterion(LossConfig("kd"), K, 4, None)


@pytest.mark.parametrize("term", sorted(TERM_BUILDERS))
def test_criterion_computes_every_term_in_fp32_under_bf16_autocast(term):
    """The networks' bf16 autocast must not reach the terms: under autocast the criterion gives the
    fp32 value and gradients. With autocast reaching them, seven terms (IDD, PID, IFV, PA, CWD on
    features, both CIRKD terms) miss these tolerances on these features, whose large common offset
    bf16 rounds their differences against."""
    labels = _labels(h=32, w=48)
    offset = 3 * torch.randn(1, 8, 1, 1, generator=torch.Generator().manual_seed(0))
    s = {"out": 4 * _feat(c=K, seed=1), "aux": _feat(c=K, seed=2), "feat": (offset[:, :4] + _feat(c=4, seed=3)).relu()}
    t = {"out": 4 * _feat(c=K, seed=4), "feat": (offset + _feat(c=8, seed=5)).relu()}
    crit = DistillationCriterion(LossConfig("baseline", weights=((term, 1.0), ("ce", float(term == "ce"))),
                                            afdcd=AfDCDConfig(groups=4)), K, 4, 8)   # Af-DCD's groups divide 8
    images = torch.randn(3, 3, 32, 48)
    results = []
    for amp in (False, True):
        student = {name: v.clone().requires_grad_() for name, v in s.items()}
        torch.manual_seed(0)  # the terms' own random draws (CIRKD's queue samples)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):  # a fresh copy: CIRKD's queues, D's state
            total, values = copy.deepcopy(crit)(student, t, labels, images)
        total.backward()
        results.append((values[term], [student[n].grad for n in sorted(student) if student[n].grad is not None]))
    (value, grads), (value_amp, grads_amp) = results
    assert value_amp.dtype == torch.float32 and grads
    torch.testing.assert_close(value_amp, value, rtol=1e-6, atol=0)
    torch.testing.assert_close(grads_amp, grads, rtol=1e-5, atol=1e-9)


NEW_TERMS = ("dist", "kd-ls", "bpkd", "afdcd")     # the methods published since CIRKD (docs/baselines.md)


@pytest.mark.parametrize("term", NEW_TERMS)
def test_new_terms_give_finite_values_and_gradients_with_an_absent_class(term):
    """Class 4 absent from every image, image 2 entirely ignored, logits saturated (x 30), a student
    map at half the teacher's size: values and the student's gradients stay finite, the teacher gets
    none, and a student equal to the teacher scores lower than a different one."""
    labels = _labels(h=32, w=48)
    labels[2] = 255
    t = {"out": 30 * _feat(c=K, h=8, w=12, seed=4), "feat": _feat(c=32, h=8, w=12, seed=5).requires_grad_()}
    crit = DistillationCriterion(LossConfig("baseline", weights=((term, 1.0), ("ce", 0.0)),
                                            afdcd=AfDCDConfig(mask="centre")), K, 16, 32)
    s = {"out": 30 * _feat(c=K, h=4, w=6, seed=1), "feat": _feat(c=16, h=4, w=6, seed=3)}
    s = {name: v.requires_grad_() for name, v in s.items()}
    total, values = crit(s, t, labels)
    total.backward()
    grads = [v.grad for v in s.values() if v.grad is not None]
    assert torch.isfinite(total) and total > 0 and grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads) and t["feat"].grad is None
    if term != "afdcd":       # logit terms: the teacher's own logits score lower (Af-DCD projects first)
        same = crit({"out": t["out"]}, t, labels)[0]
        assert same < total
