"""Channel-wise distillation, CWD: ``cwd`` on logits and ``cwd-feat`` on head features."""
from __future__ import annotations

from torch import nn

from ..config import CWDConfig, LossConfig
from .common import softmax_kl, to_size
from .registry import TermDims, register_term


@register_term("cwd", key="out")
@register_term("cwd-feat", key="feat")
class ChannelWiseDistillation(nn.Module):
    r"""CWD: each channel becomes a distribution over the positions, matched with KL.

    .. math:: \phi(y)_{c,i} = \frac{\exp(y_{c,i}/T)}{\sum_j \exp(y_{c,j}/T)},\qquad
              L = \frac{T^2}{N C}\sum_{n,c}\sum_i \phi(y^T)_{nc,i}\log\frac{\phi(y^T)_{nc,i}}{\phi(y^S)_{nc,i}}

    over every image of the batch (the official ``CriterionCWD`` with ``norm_type='none'`` used
    the first image only; the channel-normalised path used here never had that bug). Positions
    include unlabelled pixels: CWD uses no labels.

    * ``cwd`` (logits): T = 4, weight 3 - the official README (``exp_cwd.sh channel kl 3 4``),
      alone, no KD, no adversarial term. mmrazor uses T = 1, weight 5.
    * ``cwd-feat`` (head features): a 1x1 conv adapter (no bias) maps the student's channels to
      the teacher's when they differ (CIRKD ``losses/cwd.py``); T = 4, weight 50 (CIRKD).

    The official loss is already a mean over (n, c), so the weights need no conversion.
    """

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
        if self.adapter is not None:
            y_s = self.adapter(y_s)
        y_s = to_size(y_s, y_t.shape[-2:])
        t = self.temperature
        kl = softmax_kl(y_t.flatten(2) / t, y_s.flatten(2) / t, dim=-1)          # N x C
        return t * t * kl.mean()
