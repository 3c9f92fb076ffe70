"""The method registry: term registration, the methods' default weights, the criterion.

Each loss term registers itself where it is declared (:func:`register_term`), :data:`METHODS`
names the terms and default weights of every method, and :class:`DistillationCriterion` builds
and sums a method's terms.


Default weights and their sources are in docs/baselines.md, in our normalisation: pixel terms are
means over valid (non-ignored) pixels, times T^2. So our ``kd`` weight 1 is CIRKD's per-pixel
weight; IFVD's ``lambda_kd=10`` with ``nn.KLDivLoss()`` (mean over classes too) is 10/C = 0.53
for C = 19. Composite recipes are methods of their own. The ``idd`` and ``pid`` weights are not
given by the paper's abstract: calibrated on the default benchmark and swept in 03_ablation.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import LossConfig


@dataclass(frozen=True)
class TermDims:
    """What a term's own modules are sized by: the class count and the two networks' feature widths
    (``teacher_channels`` is None for a run without a teacher)."""
    num_classes: int
    student_channels: int
    teacher_channels: int | None


@dataclass(frozen=True)
class SearchSpace:
    """What tuning may vary in a term (:mod:`idd_lib.tuning`), centred on the published default:
    its weight, as ``weight_factors`` times the method's default weight (a log grid, 1 = the
    default), and optionally one ``option`` (a temperature) over ``values`` centred on its
    config default. Declared by each term class as its ``search_space`` attribute."""
    weight_factors: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    option: str = ""
    values: tuple[float, ...] = ()


# term name -> ``builder(cfg: LossConfig, dims: TermDims) -> nn.Module``, filled by @register_term
TERM_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
# term name -> its search space (None: not tuned, the task loss), filled by @register_term
TERM_SEARCH: dict[str, SearchSpace | None] = {}
TEACHER_FREE_TERMS = {"ce"}


def register_term(name: str, **fixed):
    """Class decorator: the term ``name`` is built by ``cls.from_config(cfg, dims, **fixed)``, with
    the run's :class:`~idd_lib.config.LossConfig` and :class:`TermDims` (``fixed``: arguments that
    tell apart two terms of one class, e.g. CWD on logits or on features). A class without a
    ``search_space`` attribute is never tuned."""
    def register(cls):
        if name in TERM_BUILDERS:
            raise ValueError(f"loss term {name!r} is registered twice")
        TERM_BUILDERS[name] = functools.partial(cls.from_config, **fixed)
        TERM_SEARCH[name] = getattr(cls, "search_space", None)
        return cls
    return register


@dataclass(frozen=True)
class Method:
    """A registered method: its loss terms with default weights and a one-line description."""
    name: str
    weights: dict[str, float]
    description: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("baseline", {"ce": 1.0}, "student trained on labels only"),
    Method("kd", {"ce": 1.0, "kd": 1.0}, "pixel-wise KD on logits (Hinton, per pixel; CIRKD's weight)"),
    Method("idd-only", {"ce": 1.0, "idd": 5.0}, "IDD term alone on head features"),
    Method("idd", {"ce": 1.0, "kd": 1.0, "idd": 5.0}, "IDD + pixel-wise KD (the paper's framework without the adversarial term)"),
    Method("pid", {"ce": 1.0, "kd": 1.0, "pid": 1.0}, "position information distillation + pixel-wise KD"),
    Method("idd+pid", {"ce": 1.0, "kd": 1.0, "idd": 5.0, "pid": 1.0}, "full IDD objective without the adversarial term"),
    # each baseline term alone, at the weight of its published recipe
    Method("pa", {"ce": 1.0, "pa": 10.0}, "SKD pair-wise affinity alone (CIRKD's weight and 2x2 graph)"),
    Method("ho", {"ce": 1.0, "ho": 0.001}, "SKD holistic adversarial term alone (WGAN-GP, own Adam)"),
    Method("ifv", {"ce": 1.0, "ifv": 200.0}, "IFVD intra-class feature variation alone (IFVD's weight)"),
    Method("cwd", {"ce": 1.0, "cwd": 3.0}, "CWD on logits, T = 4, alone: the official CWD README recipe"),
    Method("cwd-feat", {"ce": 1.0, "cwd-feat": 50.0}, "CWD on head features with a 1x1 adapter alone (CIRKD's weight)"),
    Method("cirkd-mb", {"ce": 1.0, "cirkd-mb": 1.0}, "CIRKD mini-batch pixel-to-pixel term alone"),
    Method("cirkd-mem", {"ce": 1.0, "cirkd-mem": 0.1}, "CIRKD memory pixel-to-pixel + pixel-to-region terms alone"),
    # published composites
    Method("skd", {"ce": 1.0, "kd": 1.0, "pa": 10.0, "ho": 0.001}, "SKD as in CIRKD's runs: KD + pair-wise + adversarial"),
    Method("ifvd", {"ce": 1.0, "kd": 0.53, "ifv": 200.0, "ho": 0.001}, "IFVD's own recipe: KD (10/C) + IFV + adversarial"),
    Method("cwd-cirkd", {"ce": 1.0, "kd": 1.0, "cwd": 3.0, "cwd-feat": 50.0, "ho": 0.001},
           "CWD as in CIRKD's runs: KD + CWD on logits and features + adversarial"),
    Method("cirkd", {"ce": 1.0, "kd": 1.0, "cirkd-mb": 1.0, "cirkd-mem": 0.1}, "CIRKD (Cityscapes weights): KD + mini-batch + memory"),
    # methods published since CIRKD (issue 21), each at its authors' published recipe
    Method("dist", {"ce": 1.0, "dist": 1.0}, "DIST: inter- and intra-class Pearson relations (DIST_KD's segmentation recipe)"),
    Method("kd-ls", {"ce": 0.1, "kd-ls": 9.0}, "KD on standardised logits, T = 2 (the authors' KD+Ours recipe, CIFAR-100)"),
    Method("bpkd", {"ce": 1.0, "bpkd": 1.0}, "BPKD edge + body distillation (our reconstruction: no authors' loss code)"),
    Method("af-dcd", {"ce": 1.0, "kd": 1.0, "afdcd": 1.0}, "Af-DCD: KD + masked feature mimicking + omni-contrast (Cityscapes scripts)"),
)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method: unknown method {name!r}; expected one of {sorted(METHODS)}") from None


def method_weights(cfg: LossConfig) -> dict[str, float]:
    """The method's default weights with ``cfg.weights`` overrides; unknown terms are an error."""
    weights = dict(get_method(cfg.method).weights)
    for term, weight in cfg.weights:
        if term not in TERM_BUILDERS:
            raise ValueError(f"weights: unknown loss term {term!r}; expected among {sorted(TERM_BUILDERS)}")
        if not (weight >= 0 and weight != float("inf")):
            raise ValueError(f"weights: {term} must be a finite number >= 0, got {weight}")
        weights[term] = weight
    return {term: w for term, w in weights.items() if w > 0}


def _as_float(outputs: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """fp32 views of a network's outputs (no copy when they are fp32 already; differentiable)."""
    return None if outputs is None else {name: v.float() if v.is_floating_point() else v for name, v in outputs.items()}


class DistillationCriterion(nn.Module):
    """Weighted sum of the method's terms; holds the terms' own parameters (read-outs, adapters,
    projections) and modules trained by a term's own optimiser (the adversarial discriminator).

    Terms with ``uses_images`` also receive the input images. Terms with an ``update`` method run
    a second optimisation step of their own after the student's (:meth:`update`), and list what
    they train in ``separate_parameters()``: :meth:`student_parameters` leaves those out. Terms
    with ``needs_prefit`` fit modules of theirs once before training (:meth:`pending_prefits`;
    the engine runs them) and list those modules' parameters there too.
    """

    def __init__(self, cfg: LossConfig, num_classes: int, student_channels: int, teacher_channels: int | None):
        super().__init__()
        self.weights = method_weights(cfg)
        self.needs_teacher = any(t not in TEACHER_FREE_TERMS for t in self.weights)
        if self.needs_teacher and teacher_channels is None:
            raise ValueError(f"method: {cfg.method!r} needs a teacher, but none was given")
        dims = TermDims(num_classes, student_channels, teacher_channels)
        self.terms = nn.ModuleDict({t: TERM_BUILDERS[t](cfg, dims) for t in self.weights})

    def forward(self, student_out, teacher_out, labels, images=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # The networks may run under bf16 autocast, but the terms run in fp32: they compare small
        # differences of large quantities (centre distances, affinities, cosine maps), and autocast
        # would round their matmuls and convolutions to bf16 (``benchmarks/loss_precision.py``).
        with torch.autocast(labels.device.type, enabled=False):
            values = self.term_values(_as_float(student_out), _as_float(teacher_out), labels, images)
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, values

    def term_values(self, student_out, teacher_out, labels, images=None) -> dict[str, torch.Tensor]:
        """Each term's unweighted value, computed in whatever precision the caller's context sets."""
        return {name: term(student_out, teacher_out, labels, images=images) if getattr(term, "uses_images", False)
                else term(student_out, teacher_out, labels) for name, term in self.terms.items()}

    def student_parameters(self) -> list[nn.Parameter]:
        """What the student's optimiser trains: every parameter except those a term trains itself."""
        separate = {id(p) for term in self.terms.values() if hasattr(term, "separate_parameters")
                    for p in term.separate_parameters()}
        return [p for p in self.parameters() if id(p) not in separate]

    def pending_prefits(self) -> dict[str, nn.Module]:
        """Terms with modules fitted before training (``needs_prefit``; see e.g.
        :meth:`PositionDistillation.prefit`) that have not been fitted yet."""
        return {name: term for name, term in self.terms.items() if getattr(term, "needs_prefit", False)}

    def prefit_losses(self) -> dict[str, float]:
        """The final fit loss of each pre-fitted term, named ``<term>_prefit``."""
        return {f"{name}_prefit": float(term.prefit_loss) for name, term in self.terms.items()
                if hasattr(term, "prefit_loss")}

    def update(self, student_out, teacher_out, labels, images=None) -> dict[str, torch.Tensor]:
        """Run the terms' own optimisation steps (after the student's); returns their losses to log,
        named ``<term>_<name>`` (e.g. ``ho_d``, the discriminator loss)."""
        logs = {}
        for name, term in self.terms.items():
            if hasattr(term, "update"):
                logs.update({f"{name}_{k}": v for k, v in term.update(student_out, teacher_out, labels, images).items()})
        return logs
