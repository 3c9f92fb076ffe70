"""Channel-wise distillation, CWD: ``cwd`` on logits and ``cwd-feat`` on head features."""
from __future__ import annotations

from torch import nn

from ..config import CWDConfig, LossConfig
from .common import softmax_kl, to_size
from .registry import SearchSpace, TermDims, register_term


@register_term("cwd", key="out")
@register_term("cwd-feat", key="feat")
class ChannelWiseDistillation(nn.Module):
    r"""CWD: each channel becomes a distribution over the positions, matched with KL.

    .. math:: \phi(y)_{c,i} = \frac{\exp(y_{c,i}/T)}{\sum_j \exp(y_{c,j}/T)},\qquad
              L = \frac{T^2}{N C_S}\sum_{n}\sum_{c=1}^{C_T}\sum_i
                  \phi(y^T)_{nc,i}\log\frac{\phi(y^T)_{nc,i}}{\phi(g(y^S))_{nc,i}}

    over every image of the batch (the official ``CriterionCWD`` with ``norm_type='none'`` used
    the first image only; the channel-normalised path used here never had that bug). Positions
    include unlabelled pixels: CWD uses no labels.

    * ``cwd`` (logits): T = 4, weight 3 - the official README (``exp_cwd.sh channel kl 3 4``),
      alone, no KD, no adversarial term. mmrazor uses T = 1, weight 5. Here C_S = C_T = classes.
    * ``cwd-feat`` (head features): a 1x1 conv adapter g (no bias) maps the student's C_S channels
      to the teacher's C_T when they differ (CIRKD ``losses/cwd.py``); T = 4, weight 50 (CIRKD).

    The sum over the C_T adapted channels is divided by N·C_S, the student's width *before* the
    adapter, exactly as CIRKD's ``CriterionCWD`` reads ``n, c`` from ``preds_S`` before its
    ``self.conv``: so CIRKD's weight 50 applies unchanged at any pair of widths (at C_T = 4 C_S the
    term is 4x a mean over channels; ``tests/test_parity.py::test_cwd_feat_matches_cirkd``).
    """

    search_space = SearchSpace(option="loss.cwd.temperature", values=(2.0, 4.0, 8.0))

    def __init__(self, cfg: CWDConfig, key: str = "out", student_channels: int | None = None,
                 teacher_channels: int | None = None):
        super().__init__()
        if not cfg.temperature > 0:
            raise ValueError(f"options: cwd.temperature must be > 0, got {cfg.temperature}")
        self.temperature, self.key = cfg.temperature, key
        self.adapter = None
        if key == "feat" and student_channels != teacher_channels:
            self.adapter = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims, key: str = "out") -> ChannelWiseDistillation:
        return cls(cfg.cwd, key, dims.student_channels, dims.teacher_channels)

    def forward(self, student_out, teacher_out, labels):
        y_t = teacher_out[self.key].detach().float()
        y_s = student_out[self.key].float()
        n, student_channels = y_s.shape[:2]   # CIRKD's normaliser: the student's width before the adapter
        if self.adapter is not None:
            y_s = self.adapter(y_s)
        y_s = to_size(y_s, y_t.shape[-2:])
        t = self.temperature
        kl = softmax_kl(y_t.flatten(2) / t, y_s.flatten(2) / t, dim=-1)          # N x C_T
        return t * t * kl.sum() / (n * student_channels)
