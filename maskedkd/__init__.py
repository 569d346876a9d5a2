"""maskedkd: the MaskedKD method (Son et al., ECCV 2024) as a small torch + timm library.

Public API (stable): :func:`cls_attention`, :func:`select_keep` with the :data:`POLICIES`
registry, :func:`masked_forward`, :func:`kd_loss`, :func:`distill_loss`, :class:`TopK`,
:func:`teacher_flops`. This package does no file I/O and never imports ``pipeline``.
"""

from maskedkd.flops import teacher_flops
from maskedkd.losses import TopK, distill_loss, kd_loss
from maskedkd.masked_forward import masked_forward
from maskedkd.policies import POLICIES, needs_saliency, register_policy, select_keep
from maskedkd.saliency import cls_attention

__all__ = [
    "POLICIES",
    "TopK",
    "cls_attention",
    "distill_loss",
    "kd_loss",
    "masked_forward",
    "needs_saliency",
    "register_policy",
    "select_keep",
    "teacher_flops",
]

# Deterministic views (sample_view -> View -> render), shared by precompute and trainer.
from maskedkd.views import (  # noqa: E402
    View,
    ViewSpec,
    mix_target,
    render,
    render_batch,
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
]
