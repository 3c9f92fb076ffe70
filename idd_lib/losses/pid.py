"""PID (``pid``), our reconstruction of position information distillation (docs/method.md).

Position target maps, the read-outs, and the loss (hypothesis H1).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig, PIDConfig
from .common import check_choice, to_size
from .registry import SearchSpace, TermDims, register_term


def position_targets(names: tuple[str, ...], size: tuple[int, int], device=None) -> torch.Tensor:
    """Position maps ``P x h x w``: normalised x and y ramps in [-1, 1] and a centred Gaussian."""
    ys = torch.linspace(-1.0, 1.0, size[0], device=device)[:, None].expand(size)
    xs = torch.linspace(-1.0, 1.0, size[1], device=device)[None, :].expand(size)
    maps = {"x": xs, "y": ys, "gaussian": torch.exp(-(xs.square() + ys.square()) / (2 * 0.4 ** 2))}
    unknown = set(names) - set(maps)
    if unknown:
        raise ValueError(f"options: pid.targets has unknown maps {sorted(unknown)}; expected among {sorted(maps)}")
    return torch.stack([maps[n] for n in names])


def position_readout(in_channels: int, hidden: int, outputs: int) -> nn.Sequential:
    """A small read-out: 3x3 conv - ReLU - 1x1 conv with ``hidden`` channels, or with ``hidden=0``
    one linear 3x3 conv, the base read-out of PosENet (Islam et al. 2020)."""
    if hidden == 0:
        return nn.Sequential(nn.Conv2d(in_channels, outputs, 3, padding=1))
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, outputs, 1))


@register_term("pid")
class PositionDistillation(nn.Module):
    r"""PID (our reconstruction of the paper's position module, docs/method.md, hypothesis H1).

    A teacher read-out :math:`\phi_T` regresses the position maps G from detached teacher features,
    :math:`L_{fit} = \lVert \phi_T(F_T) - G \rVert^2`. With ``pid.teacher_fit``

    * ``joint``: :math:`L_{fit}` is added to the loss and fits :math:`\phi_T` alongside distillation
      (it touches only :math:`\phi_T`);
    * ``prefit``: :meth:`prefit` fits :math:`\phi_T` on its own before distillation (Adam,
      ``pid.prefit_steps`` batches), then :math:`\phi_T` stays frozen and the loss has no fit term.

    The student term is

    * ``readout``: :math:`\lVert \phi_S(F_S) - \phi_T(F_T) \rVert^2` with a student read-out
      :math:`\phi_S`;
    * ``probe``:   :math:`\lVert \phi_T(A F_S) - \phi_T(F_T) \rVert^2` with a 1x1 adapter A and
      :math:`\phi_T` frozen for this term;

    pixel means. Student features are resized to the teacher's size. Each read-out is
    :func:`position_readout` with ``pid.hidden`` channels (0: one linear 3x3 conv).
    """

    search_space = SearchSpace()  # the weight only: no temperature

    def __init__(self, student_channels: int, teacher_channels: int, cfg: PIDConfig):
        super().__init__()
        check_choice(cfg.mode, ("readout", "probe"), "pid.mode")
        check_choice(cfg.teacher_fit, ("joint", "prefit"), "pid.teacher_fit")
        if cfg.hidden < 0:
            raise ValueError(f"options: pid.hidden must be >= 0 (0: one linear 3x3 conv), got {cfg.hidden}")
        if cfg.teacher_fit == "prefit" and (cfg.prefit_steps < 1 or not cfg.prefit_lr > 0):
            raise ValueError(f"options: pid.teacher_fit=prefit needs pid.prefit_steps >= 1 and pid.prefit_lr > 0, "
                             f"got {cfg.prefit_steps} and {cfg.prefit_lr}")
        self.cfg = cfg
        self.prefit_steps = cfg.prefit_steps
        outputs = len(cfg.targets)
        position_targets(cfg.targets, (2, 2))  # validates names early
        self.teacher_readout = position_readout(teacher_channels, cfg.hidden, outputs)
        if cfg.mode == "readout":
            self.student_readout = position_readout(student_channels, cfg.hidden, outputs)
        else:
            self.adapter = nn.Conv2d(student_channels, teacher_channels, 1)
        if cfg.teacher_fit == "prefit":
            self.teacher_readout.requires_grad_(False)
            # the final fit loss of prefit(), NaN until it ran; saved with the checkpoint, so a
            # resumed run neither fits again nor forgets the value
            self.register_buffer("prefit_loss", torch.tensor(float("nan")))
            self._prefit_checked = False

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> PositionDistillation:
        return cls(dims.student_channels, dims.teacher_channels, cfg.pid)

    @property
    def needs_prefit(self) -> bool:
        return self.cfg.teacher_fit == "prefit" and bool(self.prefit_loss.isnan())

    def separate_parameters(self) -> list[nn.Parameter]:
        r"""With ``prefit``, :math:`\phi_T` is trained by :meth:`prefit`'s optimiser, not the student's."""
        return list(self.teacher_readout.parameters()) if self.cfg.teacher_fit == "prefit" else []

    def _fit_loss(self, pos_t: torch.Tensor) -> torch.Tensor:
        target = position_targets(self.cfg.targets, pos_t.shape[-2:], pos_t.device)
        return F.mse_loss(pos_t, target.expand(pos_t.shape[0], -1, -1, -1))

    def prefit(self, teacher_outputs: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
        r"""Fit :math:`\phi_T` alone, one Adam step per teacher output, then freeze it; returns the
        last fit loss (also kept in ``prefit_loss``)."""
        readout = self.teacher_readout
        optimizer = torch.optim.Adam(readout.parameters(), lr=self.cfg.prefit_lr)
        readout.requires_grad_(True)
        fit = torch.tensor(float("nan"))
        try:
            for teacher_out in teacher_outputs:
                with torch.enable_grad():  # per step: the caller's iterator may switch grad mode between items
                    fit = self._fit_loss(readout(teacher_out["feat"].detach().float()))
                optimizer.zero_grad(set_to_none=True)
                fit.backward()
                optimizer.step()
        finally:
            readout.requires_grad_(False).zero_grad(set_to_none=True)
        self.prefit_loss.copy_(fit.detach())
        return self.prefit_loss.clone()

    def forward(self, student_out, teacher_out, labels):
        f_t = teacher_out["feat"].detach().float()
        f_s = student_out["feat"].float()
        f_s = to_size(f_s, f_t.shape[-2:])
        if self.cfg.teacher_fit == "prefit":
            if self.training and not self._prefit_checked:  # once: reading the buffer syncs with the GPU
                if self.needs_prefit:
                    raise RuntimeError("pid.teacher_fit=prefit: the teacher read-out has not been pre-fitted "
                                       "(PositionDistillation.prefit runs before training)")
                self._prefit_checked = True
            with torch.no_grad():  # frozen: its backward would be wasted work
                pos_t = self.teacher_readout(f_t)
            fit = 0.0
        else:
            pos_t = self.teacher_readout(f_t)
            fit = self._fit_loss(pos_t)
        if self.cfg.mode == "readout":
            pos_s = self.student_readout(f_s)
        else:
            frozen = {k: v.detach() for k, v in self.teacher_readout.named_parameters()}
            pos_s = torch.func.functional_call(self.teacher_readout, frozen, (self.adapter(f_s),))
        return F.mse_loss(pos_s, pos_t.detach()) + fit
