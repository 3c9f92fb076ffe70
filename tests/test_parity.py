"""Parity of every baseline term with the code its docstring cites (docs/baselines.md).

Each ``cited_*`` function is a transcription, written here, of the formula as the cited repository
computes it (CIRKD ``losses/*.py``, IFVD ``utils/criterion.py``, SKD ``utils/criterion.py`` and
``utils/utils.py``), loops and all. They run on fixed tensors with ignored pixels, an absent class,
different student/teacher widths and non-square maps; each test asserts our term equals the cited
value times the conversion factor docs/baselines.md states, or measures a documented difference.
"""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from idd_lib.config import AdversarialConfig, CIRKDConfig, CWDConfig, KDConfig, LossConfig, PairwiseConfig
from idd_lib.data.datasets import dataset_spec
from idd_lib.losses import (METHODS, ChannelWiseDistillation, CrossImageMemoryLoss, CrossImagePixelLoss,
                            IntraClassFeatureVariationLoss, PairwiseAffinityLoss, PixelwiseKD, TermDims)
from idd_lib.losses.adversarial import HolisticAdversarialLoss
from idd_lib.models import build_segmentor
from idd_lib.presets import PROFILES

pytestmark = pytest.mark.usefixtures("one_thread")

K, B, H, W = 5, 3, 6, 10            # classes, images, a non-square 6 x 10 map
C_S, C_T = 8, 16                    # student and teacher widths differ
ABSENT = 3                          # a class no pixel has


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _labels():
    labels = torch.randint(0, K - 1, (B, H, W), generator=_generator(0))
    labels[labels == ABSENT] = K - 1
    labels[:, :2, :3] = 255          # ignored pixels, some of them the image's first positions
    labels[1, 4:, 7:] = 255
    return labels


def _maps(channels, seed, scale=1.0):
    return scale * torch.randn(B, channels, H, W, generator=_generator(seed))


def _feat(term, f_s, f_t, labels=None):
    return term({"feat": f_s}, {"feat": f_t}, _labels() if labels is None else labels)


def _logits(term, z_s, z_t):
    return term({"out": z_s}, {"out": z_t}, _labels())


# ------------------------------------------------------------- pixel-wise KD

def cited_cirkd_kd(z_s, z_t, t=1.0):
    """CIRKD losses/kd.py CriterionKD: pixels as rows, kl_div batchmean, x T^2 (every pixel)."""
    c = z_t.shape[1]
    rows_s, rows_t = z_s.permute(0, 2, 3, 1).reshape(-1, c), z_t.permute(0, 2, 3, 1).reshape(-1, c)
    return F.kl_div(F.log_softmax(rows_s / t, 1), F.softmax(rows_t / t, 1), reduction="batchmean") * t * t


def cited_ifvd_kd(z_s, z_t):
    """IFVD utils/criterion.py CriterionKD: nn.KLDivLoss() with its default mean over N C h w."""
    return torch.nn.KLDivLoss()(F.log_softmax(z_s, 1), F.softmax(z_t, 1))


def cited_skd_pixelwise(z_s, z_t):
    """SKD utils/criterion.py CriterionPixelWise: sum of -p_T log p_S over the batch, / W / H."""
    n, c, w, h = z_s.shape
    p_t = F.softmax(z_t.permute(0, 2, 3, 1).reshape(-1, c), 1)
    return torch.sum(-p_t * F.log_softmax(z_s.permute(0, 2, 3, 1).reshape(-1, c), 1)) / w / h


def cited_mmrazor_kd(z_s, z_t):
    """mmrazor KLDivergence / torchdistill KDLoss: kl_div batchmean on the 4-D maps (/ N only)."""
    return F.kl_div(F.log_softmax(z_s, 1), F.softmax(z_t, 1), reduction="batchmean")


def _valid_kd_rows(z_s, z_t):
    keep = (_labels() != 255).flatten()
    rows = [z.permute(0, 2, 3, 1).reshape(-1, K)[keep] for z in (z_s, z_t)]
    return [r.T[None, :, :, None] for r in rows]          # the labelled pixels as a 1 x K x n x 1 map


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_cirkd_on_the_labelled_pixels(temperature):
    z_s, z_t = _maps(K, 1, 3.0), _maps(K, 2, 3.0)
    ours = _logits(PixelwiseKD(KDConfig(temperature)), z_s, z_t)
    assert ours.item() == pytest.approx(cited_cirkd_kd(*_valid_kd_rows(z_s, z_t), temperature).item(), rel=1e-6)
    assert METHODS["kd"].weights["kd"] == 1.0                       # CIRKD's lambda_kd = 1, no conversion


def test_kd_masks_ignored_pixels_where_the_peers_distil_all():
    """Deliberate difference: ours is the mean over labelled pixels; CIRKD/IFVD/SKD average over
    every pixel. Their value = labelled share x ours + ignored share x the mean KL of ignored pixels."""
    z_s, z_t = _maps(K, 1, 3.0), _maps(K, 2, 3.0)
    ours = _logits(PixelwiseKD(KDConfig()), z_s, z_t).item()
    valid = (_labels() != 255).float()
    kl = (F.softmax(z_t, 1) * (F.log_softmax(z_t, 1) - F.log_softmax(z_s, 1))).sum(1)
    share = valid.mean().item()
    ignored_mean = (kl * (1 - valid)).sum().item() / (1 - valid).sum().item()
    cirkd = cited_cirkd_kd(z_s, z_t).item()
    assert cirkd == pytest.approx(share * ours + (1 - share) * ignored_mean, rel=1e-6)
    assert abs(cirkd - ours) > 1e-3 * ours                          # on these tensors the two differ


def test_kd_conversion_factors_of_ifvd_skd_and_mmrazor():
    """Without ignored pixels: IFVD = ours / C (its lambda 10 is kd = 10/C = 0.53 at C = 19),
    SKD = N (ours + teacher entropy) (same gradient as N x ours: its 10 is kd = 10 N),
    mmrazor = h w x ours."""
    z_s, z_t = _maps(K, 1, 3.0), _maps(K, 2, 3.0)
    labels = torch.zeros(B, H, W, dtype=torch.long)
    ours = PixelwiseKD(KDConfig())({"out": z_s}, {"out": z_t}, labels).item()
    assert cited_cirkd_kd(z_s, z_t).item() == pytest.approx(ours, rel=1e-6)
    assert cited_ifvd_kd(z_s, z_t).item() == pytest.approx(ours / K, rel=1e-6)
    p_t = F.softmax(z_t, 1)
    entropy = -(p_t * F.log_softmax(z_t, 1)).sum(1).mean().item()
    assert cited_skd_pixelwise(z_s, z_t).item() == pytest.approx(B * (ours + entropy), rel=1e-6)
    assert cited_mmrazor_kd(z_s, z_t).item() == pytest.approx(H * W * ours, rel=1e-6)
    assert METHODS["ifvd"].weights["kd"] == round(10 / 19, 2) == 0.53


# ------------------------------------------------------------- SKD pair-wise

def _similarity(nodes, detach_norm):
    norm = nodes.norm(dim=1, keepdim=True)
    nodes = nodes / (norm.detach() + 1e-8) if detach_norm else F.normalize(nodes, dim=1)
    flat = nodes.flatten(2)
    return torch.stack([flat[b].T @ flat[b] for b in range(flat.shape[0])])


def cited_cirkd_pa(f_s, f_t):
    """CIRKD losses/skd.py CriterionStructuralKD: 2x2 max-pool (ceil), F.normalize, mean squared error."""
    pool = torch.nn.MaxPool2d(2, 2, ceil_mode=True)
    return ((_similarity(pool(f_s), False) - _similarity(pool(f_t), False)) ** 2).mean()


def cited_skd_pa(f_s, f_t, scale=0.5):
    """SKD CriterionPairWiseforWholeFeatAfterPool + utils.sim_dis_compute: kernel int(scale x size),
    the norm (+1e-8) detached, squared error / (hw)^2 / N summed."""
    kernel = (int(f_t.shape[2] * scale), int(f_t.shape[3] * scale))
    pool = torch.nn.MaxPool2d(kernel, kernel, ceil_mode=True)
    p_s, p_t = pool(f_s), pool(f_t)
    err = (_similarity(p_t, True) - _similarity(p_s, True)) ** 2
    return (err / (p_t.shape[-1] * p_t.shape[-2]) ** 2 / p_t.shape[0]).sum()


@pytest.mark.parametrize("variant, cited", [("cirkd", cited_cirkd_pa), ("skd", cited_skd_pa)])
def test_pa_matches_cirkd_and_skd_without_conversion(variant, cited):
    f_s, f_t = _maps(C_S, 3), _maps(C_T, 4)
    ours = _feat(PairwiseAffinityLoss(PairwiseConfig(variant=variant)), f_s, f_t)
    assert ours.item() == pytest.approx(cited(f_s, f_t).item(), rel=1e-5)


# ------------------------------------------------------------- SKD/IFVD adversarial (WGAN-GP)

def test_adversarial_generator_and_critic_losses_match_ifvd():
    """IFVD CriterionAdvForG (-mean D(S)) and lambda_d (CriterionAdv + CriterionAdditionalGP) with
    the same critic and the same alpha draw; the critic's architecture is a documented difference."""
    z_s, z_t = _maps(K, 1, 3.0), _maps(K, 2, 3.0)
    term = HolisticAdversarialLoss(K, AdversarialConfig())
    d_gen = copy.deepcopy(term.discriminator)
    assert _logits(term, z_s, z_t).item() == pytest.approx(-d_gen(z_s).mean().item(), rel=1e-6)
    d_crit = copy.deepcopy(term.discriminator)   # after the generator's forward (a spectral-norm power step)
    torch.manual_seed(7)
    d_fake = d_crit(z_s)            # IFVD kd_model.py's order: D(S), D(T), then the penalty
    d_real = d_crit(z_t)
    alpha = torch.rand(B, 1, 1, 1).expand_as(z_t)
    mixed = (alpha * z_t + (1 - alpha) * z_s).requires_grad_(True)
    grad = torch.autograd.grad(d_crit(mixed), mixed, torch.ones(B), create_graph=True)[0]
    penalty = torch.mean((torch.sqrt(torch.sum(grad.view(B, -1) ** 2, 1)) - 1) ** 2)
    cited = 0.1 * (-d_real.mean() + d_fake.mean() + 10.0 * penalty)       # lambda_d (lambda_adv + lambda_gp GP)
    torch.manual_seed(7)
    ours = term.update({"out": z_s}, {"out": z_t}, _labels())["d"]
    assert ours.item() == pytest.approx(cited.item(), rel=1e-5)


# ------------------------------------------------------------- IFVD

def cited_ifvd_ifv(f_s, f_t, labels, num_classes):
    """IFVD CriterionIFV: per-class painting of centres, cosine to the centre, MSE over all pixels."""
    size = f_s.shape[2:]
    tar = F.interpolate(labels[:, None].float(), size, mode="nearest")
    tar_s, tar_t = tar.expand(f_s.shape), tar.expand(f_t.shape)
    centre_s, centre_t = f_s.clone(), f_t.clone()
    for i in range(num_classes):
        m_s, m_t = (tar_s == i).float(), (tar_t == i).float()
        centre_s = (1 - m_s) * centre_s + m_s * ((m_s * f_s).sum((-1, -2)) / (m_s.sum((-1, -2)) + 1e-6))[..., None, None]
        centre_t = (1 - m_t) * centre_t + m_t * ((m_t * f_t).sum((-1, -2)) / (m_t.sum((-1, -2)) + 1e-6))[..., None, None]
    cos = torch.nn.CosineSimilarity(dim=1)
    return torch.nn.MSELoss()(cos(f_s, centre_s), cos(f_t, centre_t))


def test_ifv_is_ifvd_divided_by_the_labelled_share():
    f_s, f_t, labels = _maps(C_S, 3), _maps(C_T, 4), _labels()
    ours = _feat(IntraClassFeatureVariationLoss(K), f_s, f_t, labels).item()
    share = (labels != 255).float().mean().item()
    assert ours * share == pytest.approx(cited_ifvd_ifv(f_s, f_t, labels, K).item(), rel=1e-5)
    assert share < 0.9                                            # the factor is not 1 on these tensors


# ------------------------------------------------------------- CWD

def cited_cirkd_cwd(y_s, y_t, conv, temperature=4.0):
    """CIRKD losses/cwd.py CriterionCWD(norm_type='channel', divergence='kl'): n, c read from the
    student map BEFORE the 1x1 conv; KLDivLoss(sum) / (n c) x T^2."""
    n, c, h, w = y_s.shape
    if y_s.shape[1] != y_t.shape[1]:
        y_s = conv(y_s)
    norm_s = (y_s / temperature).reshape(n, y_s.shape[1], -1).softmax(-1)
    norm_t = (y_t / temperature).reshape(n, y_t.shape[1], -1).softmax(-1)
    loss = torch.nn.KLDivLoss(reduction="sum")(norm_s.log(), norm_t)
    return loss / (n * c) * temperature ** 2


def test_cwd_logits_matches_cirkd():
    z_s, z_t = _maps(K, 1, 3.0), _maps(K, 2, 3.0)
    ours = _logits(ChannelWiseDistillation(CWDConfig(), "out"), z_s, z_t)
    assert ours.item() == pytest.approx(cited_cirkd_cwd(z_s, z_t, None).item(), rel=1e-5)


def test_cwd_feat_matches_cirkd():
    """CIRKD divides by N C_student: at C_T = 2 C_S that is twice a mean over the teacher's channels."""
    f_s, f_t = _maps(C_S, 3), _maps(C_T, 4)
    term = ChannelWiseDistillation(CWDConfig(), "feat", C_S, C_T)
    ours = _feat(term, f_s, f_t).item()
    assert ours == pytest.approx(cited_cirkd_cwd(f_s, f_t, term.adapter).item(), rel=1e-5)
    with torch.no_grad():
        kl = F.kl_div(F.log_softmax(term.adapter(f_s).flatten(2) / 4, -1), F.softmax(f_t.flatten(2) / 4, -1),
                      reduction="none").sum(-1)
    assert ours == pytest.approx(C_T / C_S * 16 * kl.mean().item(), rel=1e-5)


def _profile_widths(profile):
    num_classes = dataset_spec(profile.data).num_classes
    with torch.device("meta"):
        return (build_segmentor(profile.student, num_classes).feature_channels,
                build_segmentor(profile.teacher, num_classes).feature_channels)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_cwd_feat_default_is_cirkds_recipe_at_every_profiles_widths(name):
    """CIRKD's lambda 50 on its own loss equals our weight 50 on ours at this profile's widths."""
    c_s, c_t = _profile_widths(PROFILES[name])
    f_s = torch.randn(2, c_s, 3, 5, generator=_generator(5))
    f_t = torch.randn(2, c_t, 3, 5, generator=_generator(6))
    term = ChannelWiseDistillation(CWDConfig(), "feat", c_s, c_t)
    weight = METHODS["cwd-feat"].weights["cwd-feat"]
    ours = weight * term({"feat": f_s}, {"feat": f_t}, None)
    assert weight == 50.0 and ours.item() == pytest.approx(50 * cited_cirkd_cwd(f_s, f_t, term.adapter).item(),
                                                         rel=1e-5)


# ------------------------------------------------------------- CIRKD mini-batch

def cited_cirkd_minibatch(f_s, f_t, temperature=0.1):
    """CIRKD losses/cirkd_mini_batch.py: every image pair, row softmax of the cross-image
    similarities at tau, kl_div batchmean, / B^2 (maps under 256 x 256: no pooling)."""
    f_s, f_t = F.normalize(f_s, dim=1), F.normalize(f_t, dim=1)
    n = f_s.shape[0]
    total = torch.tensor(0.0)
    for i in range(n):
        for j in range(n):
            s = f_s[i].flatten(1).T @ f_s[j].flatten(1)
            t = f_t[i].flatten(1).T @ f_t[j].flatten(1)
            total = total + F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1),
                                     reduction="batchmean")
    return total / (n * n)


def test_cirkd_minibatch_matches_cirkd():
    f_s, f_t = _maps(C_S, 3), _maps(C_T, 4)
    ours = _feat(CrossImagePixelLoss(CIRKDConfig()), f_s, f_t)
    assert ours.item() == pytest.approx(cited_cirkd_minibatch(f_s, f_t).item(), rel=1e-5)


# ------------------------------------------------------------- CIRKD memory

SMALL_QUEUES = CIRKDConfig(pixel_memory=6, region_memory=4, pixel_contrast=8, region_contrast=8)


def cited_cirkd_memory_contrast(s_feats, t_feats, labels, pixel_queue, region_queue, cfg):
    """CIRKD losses/cirkd_memory.py StudentSegContrast.forward after its enqueue: the labelled
    anchors against the same ``contrast_size`` slots of every class's queue (_sample_negative),
    contrast_sim_kd = kl_div batchmean x T^2; returns (pixel, region)."""
    t_feats = F.normalize(t_feats, dim=1)
    s_feats = F.normalize(s_feats, dim=1)
    keep = labels.flatten() != 255
    s = s_feats.permute(0, 2, 3, 1).reshape(-1, s_feats.shape[1])[keep]
    t = t_feats.permute(0, 2, 3, 1).reshape(-1, t_feats.shape[1])[keep]
    values = []
    for queue, size in ((pixel_queue, cfg.pixel_contrast), (region_queue, cfg.region_contrast)):
        index = torch.randperm(queue.shape[1])[:size]
        sample = torch.cat([queue[k, index] for k in range(queue.shape[0])])      # K x size entries
        t_logits, s_logits = t @ sample.T / cfg.temperature, s @ sample.T / cfg.temperature
        kd_t = cfg.kd_temperature
        values.append(F.kl_div(F.log_softmax(s_logits / kd_t, 1), F.softmax(t_logits / kd_t, 1),
                               reduction="batchmean") * kd_t ** 2)
    return values


def test_cirkd_memory_contrasts_per_class_as_cirkd():
    """Queues smaller than the contrast size: CIRKD contrasts every slot of every class; so must we.
    CIRKD's 0.1 pixel + 0.1 region = our weight 0.1 with region_weight 1."""
    torch.manual_seed(0)
    term = CrossImageMemoryLoss(K, C_S, C_T, SMALL_QUEUES)
    f_s, f_t, labels = _maps(C_S, 3), _maps(C_T, 4), _labels()
    ours = _feat(term, f_s, f_t, labels).item()
    pixel, region = cited_cirkd_memory_contrast(term.project(f_s), f_t, labels, term.pixel_queue,
                                                term.region_queue, SMALL_QUEUES)
    assert ours == pytest.approx((pixel + region).item(), rel=1e-5)
    assert METHODS["cirkd-mem"].weights["cirkd-mem"] == 0.1 and SMALL_QUEUES.region_weight == 1.0


def test_cirkd_memory_per_class_sample_sizes():
    """CIRKD's defaults contrast 4 096 pixel and 1 024 region slots of each class queue: 77 824 and
    19 456 entries with 19 classes; the cheaper ``total`` option about 4 096 and 1 024 in all."""
    cfg = CIRKDConfig(pixel_memory=5000, region_memory=2000)
    per_class = CrossImageMemoryLoss(19, 4, 4, cfg)
    total = CrossImageMemoryLoss(19, 4, 4, dataclasses.replace(cfg, contrast_sample="total"))
    assert per_class._sample(per_class.pixel_queue, cfg.pixel_contrast).shape[0] == 77_824
    assert per_class._sample(per_class.region_queue, cfg.region_contrast).shape[0] == 19_456
    assert total._sample(total.pixel_queue, cfg.pixel_contrast).shape[0] == 19 * (4096 // 19 + 1) == 4104
    assert total._sample(total.region_queue, cfg.region_contrast).shape[0] == 19 * (1024 // 19 + 1) == 1026


def cited_cirkd_pixel_enqueue(labels, pixel_update_freq=16):
    """CIRKD _dequeue_and_enqueue, pixel part: per image and present class, K = min(num_pixel, 16)
    columns ``this_feat[:, perm[:K]]`` with perm a permutation of range(num_pixel) - positions of
    the whole image, not of the class. Returns (image, class, flat position) of every entry."""
    entries = []
    for b in range(labels.shape[0]):
        this_label = labels[b].flatten()
        for lb in [x for x in torch.unique(this_label).tolist() if x != 255]:
            num_pixel = int((this_label == lb).sum())
            perm = torch.randperm(num_pixel)
            entries += [(b, lb, int(p)) for p in perm[:min(num_pixel, pixel_update_freq)]]
    return entries


def test_cirkd_pixel_enqueue_difference():
    """Deliberate difference: CIRKD enqueues the image's first positions under each class; ours
    enqueues the class's own pixels. On these labels, most of CIRKD's entries are other classes'
    or ignored pixels; every one of ours is a pixel of its class."""
    labels = _labels()
    torch.manual_seed(0)
    flat = labels.flatten(1)
    own = [int(flat[b, p]) == lb for b, lb, p in cited_cirkd_pixel_enqueue(labels)]
    assert len(own) > 0 and sum(own) / len(own) < 0.6
    # ours: the queue entries of each class are normalised teacher features of that class's pixels
    term = CrossImageMemoryLoss(K, C_T, C_T, CIRKDConfig(pixel_memory=64, region_memory=4))
    f_t = F.normalize(_maps(C_T, 4), dim=1)
    term.enqueue(f_t, labels)
    pixels = f_t.permute(0, 2, 3, 1).reshape(-1, C_T)
    for k in range(K):
        written = int(term.pixel_ptr[k])
        if k == ABSENT:
            assert written == 0
            continue
        own_pixels = pixels[labels.flatten() == k]
        match = (term.pixel_queue[k, :written] @ own_pixels.T).max(1).values
        assert written > 0 and torch.allclose(match, torch.ones(written), atol=1e-5)
