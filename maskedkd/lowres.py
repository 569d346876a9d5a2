"""The ``lowres`` policy: the teacher sees the whole view at a lower resolution (issue 28).

Instead of dropping patches, the view is downscaled so the teacher's patch grid has about as
many patches as the keep: the same token count, so about the MACs of keeping that many patches,
with every part of the view seen (coarser). The position embedding is resampled to the smaller
grid as timm's ``dynamic_img_size`` does (:func:`maskedkd._vit.embed_tokens_any_size`).

The view is the teacher's own rendering, downscaled on the device (bilinear, antialiased: the
saliency pass's :func:`maskedkd.saliency.downscale`) rather than rendered again at the lower
size: views are rendered once for both models (docs/design.md §6), the render and the view
fingerprints stay those of every other policy, and the online teacher, which has only the
rendered batch, computes exactly what precompute stores.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from maskedkd._vit import check_maskable, embed_tokens_any_size, forward_tokens
from maskedkd.masked_forward import masked_forward
from maskedkd.saliency import downscale

__all__ = ["lowres_forward", "lowres_grid", "lowres_size"]


def lowres_grid(grid: tuple[int, int], keep: int) -> tuple[int, int]:
    """The patch grid ``(rows, cols)`` whose patch count is closest to ``keep``.

    Rows run over ``1..grid[0]``, each with ``cols = max(1, round(rows * grid[1] / grid[0]))``
    (Python's ``round``), so the grid keeps the teacher's aspect; of the counts ``rows * cols``
    the one nearest ``keep`` wins, the smaller on a tie. Nearest rather than at most ``keep``:
    at 14 x 14, keep 98 gives 10 x 10 (100 patches, 2% above the keep's tokens) where "at most"
    would give 9 x 9 (81, 17% below). ``keep`` = all patches gives the teacher's own grid.
    """
    rows, cols = int(grid[0]), int(grid[1])
    if not 1 <= keep <= rows * cols:
        raise ValueError(f"keep must be between 1 and {rows * cols} (patches), got {keep}")
    best = (1, 1)
    for r in range(1, rows + 1):
        c = min(cols, max(1, round(r * cols / rows)))
        if abs(r * c - keep) < abs(best[0] * best[1] - keep):
            best = (r, c)
    return best


def lowres_size(teacher: nn.Module, keep: int) -> tuple[int, int]:
    """The image size ``(H, W)`` the teacher sees at ``keep``: :func:`lowres_grid` times the patch size
    (224 px DeiT, 16 px patches, keep 98: 160 x 160)."""
    pe = check_maskable(teacher).patch_embed
    rows, cols = lowres_grid(tuple(pe.grid_size), keep)
    return rows * int(pe.patch_size[0]), cols * int(pe.patch_size[1])


def lowres_forward(teacher: nn.Module, images: torch.Tensor, keep: int) -> torch.Tensor:
    """Teacher logits on ``images`` downscaled to :func:`lowres_size` (at the teacher's own size:
    :func:`maskedkd.masked_forward` of the whole view, bit for bit).

    Args:
        teacher: a maskable timm ViT (:func:`maskedkd.check_maskable`), normally in eval mode.
        images: Tensor[B, C, H, W] at the teacher's input size.
        keep: the budget as a patch count, 1 <= keep <= N.

    Returns:
        Tensor[B, num_classes] (float32 under autocast, as :func:`maskedkd.masked_forward`).
    """
    vit = check_maskable(teacher)
    size = lowres_size(vit, keep)
    if size == tuple(int(s) for s in vit.patch_embed.img_size):
        return masked_forward(teacher, images)
    return forward_tokens(vit, embed_tokens_any_size(vit, downscale(images, size)))

