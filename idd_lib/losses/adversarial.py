"""SKD's holistic (adversarial) term (``ho``): the discriminator and its own optimiser step.

The discriminator is part of the criterion's state (its weights and Adam state are in the
criterion's ``state_dict``, so checkpoint.pt resumes it), but it is not trained by the student's
SGD: :meth:`DistillationCriterion.student_parameters` leaves it out and the training loop calls
:meth:`HolisticAdversarialLoss.update` after each student step (the order of SKD's
``optimize_parameters``: student step, then discriminator step on the same, detached, outputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .. import distributed
from ..config import AdversarialConfig, LossConfig
from .common import check_choice, to_size
from .registry import SearchSpace, TermDims, register_term


class SelfAttention(nn.Module):
    """SAGAN self-attention: ``x + gamma * V softmax(Q^T K)``, ``gamma`` starting at 0.

    Written with ``bmm`` rather than ``F.scaled_dot_product_attention``: the gradient penalty
    differentiates the discriminator twice, which the fused CPU attention kernels do not support.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.key = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(x).flatten(2), self.key(x).flatten(2), self.value(x).flatten(2)
        attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)          # B x N x N
        return x + self.gamma * (v @ attention.transpose(1, 2)).view_as(x)


class Discriminator(nn.Module):
    """The SKD lineage's SAGAN critic (SKD networks/sagan_models.py, CIRKD utils/sagan.py): input
    batch-norm ("preprocess_GAN_mode 1"), four spectral-normalised strided convolutions with
    LeakyReLU(0.1) (64-128-256-512 channels), self-attention after the last two, a final conv to
    one channel, averaged to one score per image.

    Difference from the peers: 3x3 stride-2 convolutions and a 1x1 last conv (theirs: 4x4 and a
    4x4 valid conv), so that any logit size works - theirs needs at least 64x64 logits (a
    512x512 crop), ours also runs on the embedded benchmark's 8x16 maps.
    """

    def __init__(self, in_channels: int, conv_dim: int = 64, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm2d(in_channels)]
        channels = in_channels
        for i in range(depth):
            out = conv_dim * 2 ** i
            layers += [spectral_norm(nn.Conv2d(channels, out, 3, stride=2, padding=1)), nn.LeakyReLU(0.1)]
            if i >= depth - 2:
                layers.append(SelfAttention(out))
            channels = out
        layers.append(nn.Conv2d(channels, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean((1, 2, 3))


@register_term("ho")
class HolisticAdversarialLoss(nn.Module):
    r"""SKD's holistic term: a discriminator D scores teacher maps as real and student maps as fake.

    Generator term (this module's value, weight ``ho`` in the registry), WGAN:
    :math:`L_G = -\mathbb E\,D(S)`; hinge: the same (CIRKD ``CriterionAdvForG``).
    Discriminator step (:meth:`update`, its own Adam), WGAN-GP:

    .. math:: L_D = \lambda_d\big(-\mathbb E D(T) + \mathbb E D(S) + \lambda_{gp}\,
              \mathbb E(\lVert\nabla_{\hat x} D(\hat x)\rVert_2 - 1)^2\big),\quad
              \hat x = \alpha T + (1-\alpha) S,\ \alpha \sim U(0, 1) \text{ per image}

    hinge: :math:`\lambda_d(\mathbb E\,\mathrm{relu}(1 - D(T)) + \mathbb E\,\mathrm{relu}(1 + D(S)))`.
    D sees the logits at their own (1/8) resolution, the student's resized to the teacher's; with
    ``input=image+logits`` the image, area-downsampled to that size, is concatenated.

    Defaults (IFVD ``options.py``: ``--lambda-adv`` 0.001, ``--lambda-d`` 0.1, ``--lambda-gp`` 10,
    ``--lr-d`` 4e-4, with ``networks/kd_model.py``'s Adam betas (0.9, 0.99); the same in
    TorchDistiller, docs/baselines.md). Parity of both losses with IFVD's on one critic:
    ``tests/test_parity.py::test_adversarial_generator_and_critic_losses_match_ifvd``.
    SKD master uses the same 0.1 for the generator and SGD for D; CIRKD uses hinge, no GP.
    The D step is a constant-rate Adam, as in IFVD.
    """

    search_space = SearchSpace()  # the weight only: no temperature

    uses_images = True

    def __init__(self, num_classes: int, cfg: AdversarialConfig):
        super().__init__()
        check_choice(cfg.loss, ("wgan-gp", "hinge"), "ho.loss")
        check_choice(cfg.input, ("logits", "image+logits"), "ho.input")
        self.cfg = cfg
        self.discriminator = Discriminator(num_classes + (3 if cfg.input == "image+logits" else 0), cfg.conv_dim)
        self._optimizer: torch.optim.Optimizer | None = None

    # Created on first use, after the criterion has been moved to its device.
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.lr, betas=self.cfg.betas)
        return self._optimizer

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> HolisticAdversarialLoss:
        return cls(dims.num_classes, cfg.ho)

    def separate_parameters(self):
        """Trained by :meth:`update`, never by the student's optimiser."""
        return self.discriminator.parameters()

    def _input(self, logits: torch.Tensor, size, images: torch.Tensor | None) -> torch.Tensor:
        logits = to_size(logits.float(), size)
        if self.cfg.input == "logits":
            return logits
        if images is None:
            raise ValueError("options: ho.input=image+logits needs the images; call the criterion with images=")
        return torch.cat([F.adaptive_avg_pool2d(images.float(), size), logits], 1)

    def forward(self, student_out, teacher_out, labels, images=None):
        size = teacher_out["out"].shape[-2:]
        x = self._input(student_out["out"], size, images)
        # D's parameters are frozen for this forward: the generator term moves the student only
        self.discriminator.requires_grad_(False)
        try:
            with torch.autocast(x.device.type, enabled=False):
                score = self.discriminator(x)
        finally:
            self.discriminator.requires_grad_(True)
        return -score.mean()

    def update(self, student_out, teacher_out, labels, images=None) -> dict[str, torch.Tensor]:
        """One discriminator step on the detached outputs of the step just taken."""
        size = teacher_out["out"].shape[-2:]
        fake = self._input(student_out["out"].detach(), size, images)
        real = self._input(teacher_out["out"].detach(), size, images)
        with torch.autocast(fake.device.type, enabled=False):
            d_fake, d_real = self.discriminator(fake), self.discriminator(real)
            if self.cfg.loss == "hinge":
                loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            else:
                alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
                mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
                grad, = torch.autograd.grad(self.discriminator(mixed).sum(), mixed, create_graph=True)
                penalty = (grad.flatten(1).norm(dim=1) - 1).square().mean()
                loss = d_fake.mean() - d_real.mean() + self.cfg.gp_weight * penalty
            loss = self.cfg.d_weight * loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.discriminator.parameters())  # one discriminator on every rank
        self.optimizer.step()
        return {"d": loss.detach()}

    # The optimiser's state travels with the module's state_dict (checkpoint.pt resumes it).
    def get_extra_state(self):
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state) -> None:
        if state and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
