"""What a mask costs the teacher: its agreement with the unmasked teacher along a keep ladder.

MaskedKD assumes the teacher tolerates dropped patches; a teacher that never saw shortened token
sequences may not. :func:`fidelity_curve` measures, on a batch of views, the masked teacher's
top-1, its top-1 agreement with the unmasked teacher and the mean KL(unmasked || masked) at each
rung of a keep ladder; :func:`choose_keep` takes the smallest keep whose measurement meets a
budget (docs/design.md §2, "Fidelity guard").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskedkd.flops import saliency_macs, teacher_macs
from maskedkd.keep import keep_indices, resolve_keep
from maskedkd.masked_forward import masked_forward
from maskedkd.policies import needs_saliency
from maskedkd.teacher_forward import teacher_forward

__all__ = ["DEFAULT_LADDER", "Budget", "Rung", "choose_keep", "fidelity_curve", "keep_choice", "ladder_keeps",
           "policy_choice"]

DEFAULT_LADDER = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


@dataclass(frozen=True)
class Rung:
    """The masked teacher at one keep, measured on a sample of views.

    Attributes:
        keep: patches kept (``None``: all of them, the unmasked teacher).
        top1: share of views whose masked prediction is the ground-truth class.
        agreement: share of views whose masked prediction equals the unmasked teacher's.
        kl: mean KL(unmasked || masked) in nats, at temperature 1.
        macs: teacher multiply-adds per view at this keep.
        saliency_macs: the student's saliency forward per view that labelling at this keep also
            pays offline (:func:`maskedkd.saliency_macs`; 0 for policies without saliency and
            for the unmasked teacher, which needs no mask).
    """

    keep: int | None
    top1: float
    agreement: float
    kl: float
    macs: int
    saliency_macs: int = 0

    @property
    def net_macs(self) -> int:
        """Multiply-adds per label at this keep: the teacher's and the saliency pass's."""
        return self.macs + self.saliency_macs

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (run lock, report)."""
        return asdict(self)


@dataclass(frozen=True)
class Budget:
    """How much a mask may cost: a minimum top-1 agreement with the unmasked teacher, or a
    maximum mean KL(unmasked || masked) in nats (exactly one of the two)."""

    agreement: float | None = None
    kl: float | None = None

    def __post_init__(self) -> None:
        if (self.agreement is None) == (self.kl is None):
            raise ValueError("a fidelity budget is either agreement or kl, not both and not neither")
        if self.agreement is not None and not 0 <= self.agreement <= 1:
            raise ValueError(f"agreement must be in [0, 1], got {self.agreement}")
        if self.kl is not None and self.kl < 0:
            raise ValueError(f"kl must be >= 0, got {self.kl}")

    def met(self, rung: Rung) -> bool:
        """Whether ``rung`` is within the budget."""
        if self.agreement is not None:
            return rung.agreement >= self.agreement
        return rung.kl <= self.kl  # type: ignore[operator]

    def __str__(self) -> str:
        return f"agreement >= {self.agreement}" if self.agreement is not None else f"KL <= {self.kl} nats"


def ladder_keeps(ladder: Sequence[float], num_patches: int) -> list[int | None]:
    """Keep counts of a ladder of fractions (``round(f * N)``, at least 1), ascending, without
    repeats; the full teacher is ``None``."""
    keeps = {resolve_keep(max(1, round(float(f) * num_patches)), num_patches) for f in ladder}
    return sorted(keeps, key=lambda k: num_patches if k is None else k)


@torch.no_grad()
def fidelity_curve(
    teacher: nn.Module,
    teacher_images: torch.Tensor,
    labels: torch.Tensor,
    keeps: Sequence[int | None],
    policy: str,
    *,
    seeds: Sequence[int],
    student: nn.Module | None = None,
    student_images: torch.Tensor | None = None,
    batch_size: int = 256,
    autocast: Any = None,
    saliency_scale: float = 1.0,
) -> list[Rung]:
    """The masked teacher at each keep of ``keeps``, against the unmasked teacher on the same views.

    Keep sets come from :func:`maskedkd.keep_indices` and the teacher runs through
    :func:`maskedkd.teacher_forward` (the same path precompute and the online teacher use), so a
    rung measures exactly the labels that would be stored; a forward policy (``lowres``) runs its
    own forward at each keep.

    Args:
        teacher: the teacher, in eval mode.
        teacher_images: Tensor[B, C, H, W], the views at the teacher's input size.
        labels: LongTensor[B], ground-truth classes.
        keeps: keep counts to measure (``None``: all patches).
        policy: a masking policy name.
        seeds: each view's seed (the ``random`` policy draws from it).
        student, student_images: the student and its own rendering of the views, for policies
            that read saliency.
        batch_size: views per forward.
        autocast: a reusable context manager entered around each saliency pass and teacher forward (e.g.
            ``torch.autocast('cuda', torch.bfloat16)``); logits are compared in float32.
        saliency_scale: the student's saliency on a view downscaled by this much
            (:func:`maskedkd.saliency_on_grid`), as precompute would compute it.

    Returns:
        One :class:`Rung` per keep, in the order given. The unmasked forward runs once for all
        rungs; a rung's ``macs`` is what labelling one view at that keep costs.
    """
    device = next(teacher.parameters()).device
    patch_embed: Any = teacher.patch_embed
    grid = tuple(patch_embed.grid_size)
    ctx = autocast or torch.autocast(device.type, enabled=False)
    n = len(teacher_images)
    full = torch.empty(n, dtype=torch.long)
    full_logp: list[torch.Tensor] = []
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        with ctx:
            logits = masked_forward(teacher, teacher_images[lo:hi].to(device)).float().cpu()
        full[lo:hi] = logits.argmax(1)
        full_logp.append(F.log_softmax(logits, 1))
    log_p = torch.cat(full_logp)
    macs_full = teacher_macs(teacher, None)
    sal = saliency_macs(student, saliency_scale) if student is not None and needs_saliency(policy) else 0
    rungs = []
    for keep in keeps:
        keep = resolve_keep(keep, grid[0] * grid[1], policy)
        if keep is None:  # the unmasked teacher itself: measured above
            rungs.append(Rung(keep=None, top1=float((full == labels).float().mean()), agreement=1.0, kl=0.0,
                              macs=macs_full))
            continue
        pred = torch.empty(n, dtype=torch.long)
        kl = torch.empty(n)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            s_img = None if student_images is None else student_images[lo:hi].to(device)
            with ctx:  # saliency under the same autocast as the teacher, as precompute computes it
                kidx = keep_indices(policy, keep, grid=grid, seeds=seeds[lo:hi], student=student, images=s_img,
                                    saliency_scale=saliency_scale)  # None: a forward policy (no keep set)
                kidx = None if kidx is None else kidx.to(device)
                logits = teacher_forward(teacher, teacher_images[lo:hi].to(device), policy, keep, kidx).float().cpu()
            pred[lo:hi] = logits.argmax(1)
            p = log_p[lo:hi]
            kl[lo:hi] = (p.exp() * (p - F.log_softmax(logits, 1))).sum(1).clamp_min(0.0)
        rungs.append(Rung(keep=keep, top1=float((pred == labels).float().mean()),
                          agreement=float((pred == full).float().mean()), kl=float(kl.mean()),
                          macs=teacher_macs(teacher, keep, policy), saliency_macs=sal))
    return rungs


def choose_keep(curve: Sequence[Rung], budget: Budget) -> int | None:
    """The smallest keep of ``curve`` within ``budget``; ``None`` (all patches) when none is.

    A keep whose net cost (:attr:`Rung.net_macs`: teacher + saliency pass) is above the unmasked
    teacher's (the curve's ``keep=None`` rung, when it has one) is never chosen: labelling with the
    full teacher is then cheaper, and needs no saliency pass.
    """
    return keep_choice(curve, budget)[0]


def keep_choice(curve: Sequence[Rung], budget: Budget) -> tuple[int | None, str]:
    """:func:`choose_keep`'s keep and the reason for it in words (printed, and kept in the run lock).

    The reason says when the full teacher was taken although a keep met the budget: its net cost
    (teacher + the student's saliency pass) was above the unmasked teacher's.
    """
    full = next((r.macs for r in curve if r.keep is None), None)
    within = sorted((r for r in curve if r.keep is not None and budget.met(r)), key=lambda r: int(r.keep or 0))
    ok = [r for r in within if full is None or r.net_macs <= full]
    if ok:
        net = "" if full is None else f", net {ok[0].net_macs / full:.2f}x the full teacher's MACs"
        return ok[0].keep, f"the smallest keep within the budget ({budget}){net}"
    if within:
        r = within[0]
        assert full is not None  # only the net cap rules out a keep within the budget
        return None, (f"keep {r.keep} is within the budget ({budget}) but costs {r.net_macs / full:.2f}x "
                      f"the full teacher's MACs with the student's saliency pass (teacher {r.macs / full:.2f}x + "
                      f"saliency {r.saliency_macs / full:.2f}x); the full teacher needs no saliency pass")
    return None, f"no keep within the budget ({budget})"


def policy_choice(curves: Mapping[str, Sequence[Rung]], budget: Budget) -> tuple[str, int | None, str]:
    """Among several policies' curves, the one whose :func:`keep_choice` costs the fewest net MACs.

    Each policy takes its own keep by :func:`keep_choice` (the smallest within ``budget`` whose net
    cost is not above the full teacher's); of those, the lowest :attr:`Rung.net_macs` wins (the
    full teacher's MACs for a policy that keeps all patches), the first in ``curves`` on a tie.

    Returns:
        ``(policy, keep, reason)``: the reason names the winner's net cost and every other
        candidate's, so the run lock says why the others lost.
    """
    if not curves:
        raise ValueError("policy_choice needs the curve of at least one policy")
    picks = []
    for policy, curve in curves.items():
        keep, why = keep_choice(curve, budget)
        full = next((r.macs for r in curve if r.keep is None), None)
        rung = next((r for r in curve if r.keep == keep), None)
        net = rung.net_macs if rung is not None else full
        picks.append((policy, keep, why, net, full))
    ranked = sorted(range(len(picks)), key=lambda i: (picks[i][3] is None, picks[i][3] or 0, i))
    policy, keep, why, net, full = picks[ranked[0]]

    def cost(p: tuple) -> str:
        k = "all patches" if p[1] is None else f"keep {p[1]}"
        return f"{p[0]} {k}" + (f" {p[3] / p[4]:.2f}x" if p[3] is not None and p[4] else "")

    others = "; ".join(cost(picks[i]) for i in ranked[1:])
    head = f"{cost(picks[ranked[0]])} the full teacher's net MACs, the cheapest of the policies within the budget"
    if keep is None:
        head = f"no policy is within the budget ({budget}) below the full teacher's cost: {policy} with all patches"
    return policy, keep, f"{head} ({why})" + (f"; the others: {others}" if others else "")
