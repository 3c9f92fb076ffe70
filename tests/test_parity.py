"""Parity of every baseline term with the code its docstring cites (docs/baselines.md).

Each ``cited_*`` function is a transcription, written here, of the formula as the cited repository
computes it (CIRKD ``losses/*.py``, IFVD ``utils/criterion.py``, SKD ``utils/criterion.py`` and
``utils/utils.py``, DIST_KD ``segmentation/losses/dist_kd.py``, logit-standardization-KD
``mdistiller/distillers/KD.py``, Af-DCD ``losses/ocmgd.py``), loops and all. They run on fixed tensors with ignored pixels, an absent class,
different student/teacher widths and non-square maps; each test asserts our term equals the cited
value times the conversion factor docs/baselines.md states, or measures a documented difference.
"""
import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idd_lib.config import (AdversarialConfig, AfDCDConfig, BPKDConfig, CIRKDConfig, CWDConfig, DISTConfig, KDConfig,
                            LossConfig, PairwiseConfig)
from idd_lib.data.datasets import dataset_spec
from idd_lib.losses import (METHODS, AugmentationFreeDCD, BoundaryPrivilegedKD, ChannelWiseDistillation,
                            CrossImageMemoryLoss, CrossImagePixelLoss, DISTLoss, IntraClassFeatureVariationLoss,
                            PairwiseAffinityLoss, PixelwiseKD, StandardizedKD, TermDims, edge_masks)
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


# ------------------------------------------------------------- methods published since CIRKD (issue 21)
# DIST (hunto/DIST_KD), KD with logit standardisation (sunshangquan/logit-standardization-KD),
# Af-DCD (OSVAI/Af-DCD); BPKD's authors publish no loss code (AkideLiu/BPKD: evaluation only), so its
# test checks our vectorised term against a loop transcription of the formula docs/baselines.md states.

def _half(z):
    """A student map at half the teacher's resolution, and that map as our terms resize it."""
    small = F.interpolate(z, scale_factor=0.5, mode="bilinear", align_corners=False)
    return small, F.interpolate(small, size=z.shape[-2:], mode="bilinear", align_corners=False)


def cited_dist(z_s, z_t, beta=1.0, gamma=1.0, tau=1.0):
    """DIST_KD segmentation/losses/dist_kd.py DIST.forward on 4-D logits: every pixel a row
    (``transpose(1, 3)``), softmax over classes, 1 - mean Pearson of rows (inter) and of columns
    (intra), cosine with eps 1e-8 on the norms' product; tau as the classification code (tau^2 x both)."""
    c = z_s.shape[1]
    y_s = (z_s / tau).transpose(1, 3).reshape(-1, c).softmax(1)
    y_t = (z_t / tau).transpose(1, 3).reshape(-1, c).softmax(1)

    def pearson(x, y):
        x, y = x - x.mean(1).unsqueeze(1), y - y.mean(1).unsqueeze(1)
        return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1) + 1e-8)

    inter = 1 - pearson(y_s, y_t).mean()
    intra = 1 - pearson(y_s.transpose(0, 1), y_t.transpose(0, 1)).mean()
    return tau ** 2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_dist_matches_dist_kd_on_every_pixel(tau):
    """DIST uses no labels: ignored pixels and absent classes change nothing; equal at factor 1."""
    z_s, z_t = _maps(K, 1, 3.0), _maps(K, 2, 3.0)
    ours = _logits(DISTLoss(DISTConfig(temperature=tau)), z_s, z_t)
    assert ours.item() == pytest.approx(cited_dist(z_s, z_t, tau=tau).item(), rel=1e-6)
    assert METHODS["dist"].weights == {"ce": 1.0, "dist": 1.0} and DISTConfig() == DISTConfig(1.0, 1.0, 1.0)


def test_dist_resizes_a_smaller_student_to_the_teacher():
    z_t = _maps(K, 2, 3.0)
    small, resized = _half(_maps(K, 1, 3.0))
    ours = _logits(DISTLoss(DISTConfig()), small, z_t)
    assert ours.item() == pytest.approx(cited_dist(resized, z_t).item(), rel=1e-6)


def cited_ls_kd(rows_s, rows_t, temperature=2.0):
    """logit-standardization-KD mdistiller/distillers/KD.py kd_loss(logit_stand=True): Z-score
    each row (torch.std, 1e-7 added to it), kl_div(none).sum(1).mean() x T^2."""
    def normalize(logit):
        return (logit - logit.mean(dim=-1, keepdims=True)) / (1e-7 + logit.std(dim=-1, keepdims=True))
    log_pred_student = F.log_softmax(normalize(rows_s) / temperature, dim=1)
    pred_teacher = F.softmax(normalize(rows_t) / temperature, dim=1)
    return F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature ** 2


def _rows(z, keep=None):
    rows = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return rows if keep is None else rows[keep]


@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_kd_ls_matches_the_authors_kd_loss_on_the_labelled_pixels(temperature):
    z_s, z_t = _maps(K, 1, 3.0), 5.0 * _maps(K, 2, 3.0) + 2.0        # logit ranges differ
    keep = (_labels() != 255).flatten()
    ours = _logits(StandardizedKD(KDConfig(temperature), "kd_ls"), z_s, z_t).item()
    assert ours == pytest.approx(cited_ls_kd(_rows(z_s, keep), _rows(z_t, keep), temperature).item(), rel=1e-6)
    # the deliberate difference, as kd's: the authors' rows are every pixel (classification has no ignored ones)
    everything = cited_ls_kd(_rows(z_s), _rows(z_t), temperature).item()
    assert abs(everything - ours) > 1e-3 * ours
    # standardisation is the point: plain KD on the same tensors differs
    assert _logits(PixelwiseKD(KDConfig(temperature)), z_s, z_t).item() != pytest.approx(ours, rel=1e-2)


def test_kd_ls_recipe_is_the_authors_kd_plus_ours_command():
    assert METHODS["kd-ls"].weights == {"ce": 0.1, "kd-ls": 9.0} and LossConfig().kd_ls.temperature == 2.0
    z_t = _maps(K, 2, 3.0)
    small, resized = _half(_maps(K, 1, 3.0))
    term = StandardizedKD(KDConfig(2.0), "kd_ls")
    assert _logits(term, small, z_t).item() == pytest.approx(_logits(term, resized, z_t).item(), rel=1e-6)


# Af-DCD: maps whose pooled size tiles into 4 x 4 patches, as its code requires
AF_B, AF_H, AF_W, AF_CS, AF_CT = 2, 16, 32, 8, 32


def cited_afdcd(feat_s, feat_t, term, mask_ratio=0.75, rand_mask=True):
    """OSVAI/Af-DCD losses/ocmgd.py OmniContrastiveFeatureLoss.get_dis_loss (after ``self.align``)
    with the term's own projector: the mask, the projection, MSE(sum) / BS, then the contrastive
    loss of the projected map; returns (fd, ctr)."""
    bs, c, h, w = feat_t.shape
    if rand_mask:
        mat = torch.rand((bs, 1, h, w))
        mat = torch.where(mat > 1 - mask_ratio, 0, 1)
    else:
        mat = torch.ones((bs, 1, h, w))
        mat[:, :, h // 3:2 * h // 3, w // 3:2 * w // 3] = 0
    new_fea = term.projector(torch.mul(feat_s, mat))
    dis_loss = torch.nn.MSELoss(reduction="sum")(new_fea, feat_t) / bs
    return dis_loss, cited_omni_contrast(new_fea, feat_t) / bs


def cited_omni_contrast(preds, targets, tau=0.07, m=16, pool=4, patch=(4, 4)):
    """get_omni_contrastive_loss as written: max-pool, _to_ctr_format, -L1 cdist, boolean masks of
    the similarity matrix, CrossEntropyLoss(sum) with the positive in column 0, / (H W)."""
    if pool:
        preds, targets = F.max_pool2d(preds, pool), F.max_pool2d(targets, pool)
    bs, c, h, w = preds.shape
    n2 = patch[0] * patch[1]

    def to_ctr_format(x):
        x = x.contiguous().view(bs, c, h // patch[0], patch[0], w // patch[1], patch[1]).permute(0, 2, 4, 1, 3, 5)
        x = torch.stack(x.split(c // m, dim=3), dim=3)
        x = x.contiguous().view(bs, (h * w) // n2, m, c // m, n2)
        return x.permute(0, 1, 4, 2, 3).contiguous().view(-1, n2 * m, c // m)

    similarity = -torch.cdist(to_ctr_format(preds), to_ctr_format(targets), p=1)
    mask = torch.eye(n2 * m, dtype=torch.bool).repeat(similarity.shape[0], 1, 1)
    mask_c = torch.cat([torch.arange(m) for _ in range(n2)], dim=0)
    mask_negative = ~(mask_c.unsqueeze(0) == mask_c.unsqueeze(1)).bool().repeat(similarity.shape[0], 1, 1)
    positives = similarity[mask].view(bs * h * w * m, -1)
    negatives = similarity[mask_negative].view(bs * h * w * m, -1)
    logits = torch.cat([positives, negatives], dim=1) / tau
    ctr = torch.nn.CrossEntropyLoss(reduction="sum")(logits, torch.zeros(logits.shape[0], dtype=torch.long))
    return ctr / (h * w)


def _afdcd_maps():
    f_s = torch.randn(AF_B, AF_CS, AF_H, AF_W, generator=_generator(11))
    f_t = torch.randn(AF_B, AF_CT, AF_H, AF_W, generator=_generator(12))
    labels = torch.randint(0, K, (AF_B, AF_H, AF_W), generator=_generator(13))
    labels[:, :3] = 255
    return f_s, f_t, labels


@pytest.mark.parametrize("mask, projector", [("random", "plain"), ("centre", "enhanced")])
def test_afdcd_matches_the_authors_loss(mask, projector):
    torch.manual_seed(0)
    cfg = AfDCDConfig(mask=mask, projector=projector)
    term = AugmentationFreeDCD(AF_CS, AF_CT, cfg)
    f_s, f_t, labels = _afdcd_maps()
    torch.manual_seed(5)
    fd, ctr = term.parts({"feat": f_s}, {"feat": f_t}, labels)
    torch.manual_seed(5)                                   # the same random mask
    cited_fd, cited_ctr = cited_afdcd(term.align(f_s), f_t, term, rand_mask=mask == "random")
    assert fd.item() == pytest.approx(cited_fd.item(), rel=1e-5)
    assert ctr.item() == pytest.approx(cited_ctr.item(), rel=1e-5)
    torch.manual_seed(5)
    total = term({"feat": f_s}, {"feat": f_t}, labels)
    assert total.item() == pytest.approx((2e-6 * cited_fd + 0.005 * cited_ctr).item(), rel=1e-5)


def test_afdcd_recipe_and_a_smaller_student_map():
    assert METHODS["af-dcd"].weights == {"ce": 1.0, "kd": 1.0, "afdcd": 1.0}
    assert (AfDCDConfig().fd_weight, AfDCDConfig().ctr_weight, AfDCDConfig().temperature) == (2e-6, 0.005, 0.07)
    torch.manual_seed(0)
    term = AugmentationFreeDCD(AF_CS, AF_CT, AfDCDConfig(mask="centre"))
    f_s, f_t, labels = _afdcd_maps()
    small = F.interpolate(f_s, scale_factor=0.5, mode="bilinear", align_corners=False)
    aligned = F.interpolate(term.align(small), size=f_t.shape[-2:], mode="bilinear", align_corners=False)
    ours = term.parts({"feat": small}, {"feat": f_t}, labels)
    cited = cited_afdcd(aligned, f_t, term, rand_mask=False)
    assert [o.item() for o in ours] == pytest.approx([c.item() for c in cited], rel=1e-5)


def test_afdcd_tiles_a_map_the_authors_code_cannot():
    """Deliberate difference: at the default profile's 12 x 24 features the pooled 3 x 6 map is no
    multiple of the 4 x 4 patch; Af-DCD's view fails, ours contrasts the whole 3 x 4 tiles, which
    is Af-DCD's loss on the map cut to them with a 3 x 4 patch."""
    torch.manual_seed(0)
    term = AugmentationFreeDCD(AF_CS, AF_CT, AfDCDConfig(mask="centre"))
    f_s, f_t = torch.randn(2, AF_CS, 12, 24), torch.randn(2, AF_CT, 12, 24)
    projected = term.projector(term.align(f_s) * term.mask(f_s))
    with pytest.raises(RuntimeError):
        cited_omni_contrast(projected, f_t)
    ours = term.contrastive(projected, f_t)
    cut = cited_omni_contrast(projected[..., :16], f_t[..., :16], patch=(3, 4)) / 2
    assert torch.isfinite(ours) and ours.item() == pytest.approx(cut.item(), rel=1e-5)


def _band(mask, radius):
    """Dilation minus erosion of a binary H x W map with a (2r+1)^2 square, outside the image
    neutral (scipy.ndimage)."""
    from scipy import ndimage
    square = np.ones((2 * radius + 1, 2 * radius + 1), dtype=bool)
    return (ndimage.binary_dilation(mask, square, border_value=0).astype(float)
            - ndimage.binary_erosion(mask, square, border_value=1).astype(float))


def cited_bpkd(z_s, z_t, labels, num_classes, temperature=4.0, radius=1, edge_weight=50.0, body_weight=20.0):
    """BPKD as docs/baselines.md states it, image by image and class by class: bands of each
    class's label mask (scipy morphology), their mean over each stride x stride cell, the edge KL
    averaged over each class's band, channel-wise KL of the body logits."""
    b, k, h, w = z_t.shape
    stride = labels.shape[-2] // h
    t = temperature
    edge_total, body_total = 0.0, 0.0
    for i in range(b):
        lab = labels[i].numpy()
        bands = []
        for c in range(k):
            band = _band(lab == c, radius) * (lab != 255)
            bands.append(band.reshape(h, stride, w, stride).mean((1, 3)))
        m_e = torch.tensor(np.stack(bands), dtype=torch.float32)                      # K x h x w
        p_t = F.softmax(z_t[i] * m_e / t, 0)
        phi = t * t * (p_t * (p_t.log() - F.log_softmax(z_s[i] * m_e / t, 0))).sum(0)
        for c in range(k):
            edge_total += (m_e[c] * phi).sum() / max(1.0, m_e[c].sum().item())
            q_t = F.softmax((z_t[i, c] * (1 - m_e[c])).flatten() / t, 0)
            q_s = F.log_softmax((z_s[i, c] * (1 - m_e[c])).flatten() / t, 0)
            body_total += t * t * (q_t * (q_t.log() - q_s)).sum() / k
    return edge_weight * edge_total / b + body_weight * body_total / b


def _bpkd_labels():
    """Labels at 4x the logits' 6 x 10 resolution: blocks of classes (class ABSENT nowhere),
    ignored pixels in a corner and along a band."""
    labels = torch.randint(0, K - 1, (B, H, W), generator=_generator(21))
    labels[labels == ABSENT] = K - 1
    labels = labels.repeat_interleave(4, 1).repeat_interleave(4, 2)
    labels[:, :5, :7] = 255
    labels[1, 10:13] = 255
    return labels


@pytest.mark.parametrize("radius", [1, 3])
def test_bpkd_matches_the_loop_transcription_of_its_formula(radius):
    z_s, z_t, labels = _maps(K, 1, 3.0), _maps(K, 2, 3.0), _bpkd_labels()
    term = BoundaryPrivilegedKD(K, BPKDConfig(edge_radius=radius))
    ours = term({"out": z_s}, {"out": z_t}, labels)
    assert ours.item() == pytest.approx(cited_bpkd(z_s, z_t, labels, K, radius=radius).item(), rel=1e-5)
    edge = edge_masks(labels, K, (H, W), radius)
    assert edge[:, ABSENT].abs().sum() == 0 and edge.max() <= 1                    # no band for the absent class
    assert ((edge > 0) & (edge < 1)).any() and (edge == 0).any()                     # soft bands, body elsewhere
    assert METHODS["bpkd"].weights == {"ce": 1.0, "bpkd": 1.0}


def test_bpkd_resizes_a_smaller_student_to_the_teacher():
    z_t, labels = _maps(K, 2, 3.0), _bpkd_labels()
    small, resized = _half(_maps(K, 1, 3.0))
    term = BoundaryPrivilegedKD(K, BPKDConfig())
    ours = term({"out": small}, {"out": z_t}, labels)
    assert ours.item() == pytest.approx(cited_bpkd(resized, z_t, labels, K, radius=3).item(), rel=1e-5)
