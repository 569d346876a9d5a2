"""maskedkd: the MaskedKD method (Son et al., ECCV 2024) as a small torch + timm library.

Public API (stable): :func:`cls_attention`, :func:`select_keep` with the :data:`POLICIES`
registry (keep sets) and :data:`FORWARD_POLICIES` (policies that change the teacher's forward:
``lowres``, ``tome``; :func:`register_forward_policy`, :func:`is_forward_policy`, :func:`policy_names`),
:func:`teacher_forward` (the teacher under any policy: the one path callers use),
:func:`policy_choice` (``masking.policy: auto``), :func:`keep_indices` (the one path from a policy, a keep count and a student to keep
sets) with :func:`resolve_keep` and :func:`saliency_on_grid`, :func:`masked_forward`,
:func:`tome_forward` (Token Merging inside the teacher, at a keep's MACs: :func:`tome_schedule`,
:func:`tome_macs`), :func:`kd_loss`, :func:`distill_loss` with :class:`SoftTarget` (:func:`TopK`,
:func:`from_logits`, :func:`logsumexp_at`), :func:`teacher_flops`, :func:`teacher_macs` and :func:`saliency_macs`, :func:`check_maskable` (which timm models can be
masked); deterministic views: :class:`ViewSpec`, :func:`sample_view` / :func:`shard_views` ->
:class:`View` -> :func:`render` / :func:`render_batch`, :func:`mix_target`, the view columns
(:func:`views_to_columns`, :func:`views_from_columns`, :func:`view_columns_layout`) and
:func:`view_spec_fingerprint`.
This package does no file I/O and never imports ``pipeline``.
"""

from maskedkd._vit import check_maskable
from maskedkd.fidelity import (
    DEFAULT_LADDER,
    Budget,
    Rung,
    choose_keep,
    fidelity_curve,
    keep_choice,
    ladder_keeps,
    policy_choice,
)
from maskedkd.flops import forward_macs, saliency_macs, teacher_flops, teacher_macs
from maskedkd.keep import keep_indices, resolve_keep, saliency_on_grid, select_keep
from maskedkd.losses import distill_loss, kd_loss
from maskedkd.masked_forward import masked_forward
from maskedkd.policies import (
    FORWARD_POLICIES,
    POLICIES,
    is_forward_policy,
    needs_saliency,
    policy_names,
    register_forward_policy,
    register_policy,
)
from maskedkd.saliency import cls_attention, saliency_size
from maskedkd.targets import SoftTarget, TopK, from_logits, logsumexp_at
from maskedkd.teacher_forward import teacher_forward
from maskedkd.tome import token_merged_forward, tome_forward, tome_macs, tome_schedule

__all__ = [
    "DEFAULT_LADDER",
    "Budget",
    "FORWARD_POLICIES",
    "POLICIES",
    "Rung",
    "check_maskable",
    "choose_keep",
    "fidelity_curve",
    "forward_macs",
    "ladder_keeps",
    "SoftTarget",
    "TopK",
    "cls_attention",
    "distill_loss",
    "from_logits",
    "kd_loss",
    "keep_choice",
    "keep_indices",
    "logsumexp_at",
    "masked_forward",
    "is_forward_policy",
    "needs_saliency",
    "policy_choice",
    "policy_names",
    "register_forward_policy",
    "register_policy",
    "resolve_keep",
    "saliency_on_grid",
    "saliency_size",
    "select_keep",
    "saliency_macs",
    "teacher_flops",
    "teacher_forward",
    "teacher_macs",
    "token_merged_forward",
    "tome_forward",
    "tome_macs",
    "tome_schedule",
]

# Deterministic views (sample_view -> View -> render), shared by precompute and trainer.
from maskedkd.digests import view_spec_fingerprint  # noqa: E402
from maskedkd.mixing import mix_target  # noqa: E402
from maskedkd.rendering import render, render_batch  # noqa: E402
from maskedkd.views import (  # noqa: E402
    View,
    ViewSpec,
    sample_view,
    shard_views,
    view_columns_layout,
    views_from_columns,
    views_to_columns,
)

__all__ += [
    "View",
    "ViewSpec",
    "mix_target",
    "render",
    "render_batch",
    "sample_view",
    "shard_views",
    "view_columns_layout",
    "views_from_columns",
    "views_to_columns",
    "view_spec_fingerprint",
]
