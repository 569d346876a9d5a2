"""Token Merging inside the teacher (ToMe; Bolya et al., ICLR 2023), written from the paper.

The other way to cheapen a ViT teacher: instead of dropping patches at the input
(:func:`maskedkd.masked_forward`), every block merges ``r`` of its patch tokens into similar ones
between the attention and the MLP (bipartite soft matching on the attention keys), and attention
counts a merged token as the tokens it stands for (proportional attention: ``+ log(size)`` on
each key's logit). Prefix tokens (class, distillation, registers) are never merged.

``r`` per block comes from :func:`tome_schedule`, chosen so the teacher's MACs (counted by
:func:`maskedkd.flops.forward_macs`, the counter :func:`maskedkd.teacher_macs` uses) match
``masked_forward``'s at ``keep`` patches. See docs/design.md §1 for what differs from the paper.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer

from maskedkd._vit import check_maskable, embed_tokens, fp32_region
from maskedkd.flop_count import forward_macs, masked_macs
from maskedkd.keep import resolve_keep

__all__ = ["bipartite_merge", "token_merged_forward", "tome_forward", "tome_macs", "tome_schedule"]


def bipartite_merge(
    x: torch.Tensor, size: torch.Tensor | None, metric: torch.Tensor, r: int, prefix: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Merge ``r`` patch tokens of each row into their most similar partner (bipartite soft matching).

    The patch tokens (those after the ``prefix`` tokens, which are left as they are) are split
    alternately into A (even positions) and B (odd); each A token's best match in B is the one
    with the highest cosine similarity of ``metric``; the ``r`` A tokens with the highest
    best-match scores are merged into their matches (size-weighted average; sizes add) and the
    other A tokens stay. ``r`` is capped at half the patch tokens. Tokens come back as
    ``[prefix, unmerged A (in order), B]``; B tokens that received nothing are unchanged bit for bit.

    Args:
        x: Tensor[B, T, D] tokens.
        size: Tensor[B, T] patches each token stands for (float); ``None``: all ones.
        metric: Tensor[B, T, d] what similarity is measured on (the attention keys, mean over heads).
        r: tokens to remove per row.
        prefix: leading tokens never merged and never merged into.

    Returns:
        ``(x, size)`` with ``T - r`` tokens (``size`` is ``None`` only when nothing was merged).
    """
    n = x.shape[1] - prefix
    r = min(int(r), n // 2)
    if r <= 0:
        return x, size
    if size is None:
        size = torch.ones(x.shape[:2], device=x.device, dtype=torch.float32)
    with torch.no_grad():  # the choice of pairs is discrete; only the averages carry gradients
        m = F.normalize(metric[:, prefix:].float(), dim=-1)
        best, match = (m[:, ::2] @ m[:, 1::2].transpose(1, 2)).max(dim=-1)  # [B, |A|]
        order = best.argsort(dim=-1, descending=True, stable=True)
        src, stay = order[:, :r], order[:, r:].sort(dim=-1).values
        dst = match.gather(1, src)
    head, patches = x[:, :prefix], x[:, prefix:]
    xa, xb = patches[:, ::2], patches[:, 1::2]
    sa, sb = size[:, prefix:][:, ::2], size[:, prefix:][:, 1::2]
    d = x.shape[-1]
    moved_size = sa.gather(1, src)
    moved = xa.gather(1, src.unsqueeze(-1).expand(-1, -1, d)).float() * moved_size.unsqueeze(-1)
    # scatter_add: deterministic on the CPU, and on CUDA under torch.use_deterministic_algorithms
    total = (xb.float() * sb.unsqueeze(-1)).scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, d), moved)
    new_sb = sb.scatter_add(1, dst, moved_size)
    merged = torch.where((new_sb != sb).unsqueeze(-1), (total / new_sb.unsqueeze(-1)).to(x.dtype), xb)
    kept = xa.gather(1, stay.unsqueeze(-1).expand(-1, -1, d))
    x = torch.cat([head, kept, merged], dim=1)
    size = torch.cat([size[:, :prefix], sa.gather(1, stay), new_sb], dim=1)
    return x, size


def _attention(attn: Any, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention.forward`` step for step (``attn``: a timm ``Attention``, its parts reached by
    name), plus ``log(size)`` on each key's logit once tokens were merged; also returns the keys
    averaged over heads (the merge's similarity metric)."""
    b, t, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = None if size is None else size.log()[:, None, None, :].to(q.dtype)  # proportional attention
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            scores = scores + bias
        out = attn.attn_drop(scores.softmax(dim=-1)) @ v
    out = attn.norm(out.transpose(1, 2).reshape(b, t, attn.attn_dim))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), k.mean(dim=1)


def _block(blk: Any, x: torch.Tensor, size: torch.Tensor | None, r: int, prefix: int):
    """One timm ``Block`` run from its weights (its own modules, called in its order), merging ``r``
    tokens between attention and MLP; returns ``(x, size)``."""
    out, metric = _attention(blk.attn, blk.norm1(x), size)
    x = x + blk.drop_path1(blk.ls1(out))
    x, size = bipartite_merge(x, size, metric, r, prefix)
    x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    return x, size


def _mergeable(teacher: nn.Module) -> VisionTransformer:
    """:func:`maskedkd.check_maskable`, and every block a plain timm ``Block`` (run here from its weights)."""
    vit = check_maskable(teacher)
    for i, blk in enumerate(vit.blocks):
        if type(blk) is not Block:
            raise TypeError(f"cannot merge tokens in {type(vit).__name__}: block {i} is {type(blk).__name__}, "
                            "not timm's Block")
    return vit


def token_merged_forward(teacher: nn.Module, images: torch.Tensor, schedule: Sequence[int]) -> torch.Tensor:
    """Teacher logits with ``schedule[i]`` tokens merged in block ``i`` (:func:`bipartite_merge`).

    Embedding as :func:`maskedkd.masked_forward` on all patches, then the blocks run from their
    weights with merging and proportional attention, final norm, head. An all-zero schedule
    executes the operations of ``teacher(images)`` and equals it bit for bit. Under autocast the
    final norm and head run in float32, as in ``masked_forward``.

    Args:
        teacher: a model :func:`maskedkd.check_maskable` accepts, with plain timm blocks.
        images: Tensor[B, C, H, W] at the teacher's input size.
        schedule: tokens to merge per block (capped at half the patch tokens left).

    Returns:
        Tensor[B, num_classes].
    """
    vit = _mergeable(teacher)
    if len(schedule) != len(vit.blocks) or any(r < 0 for r in schedule):
        raise ValueError(f"schedule must give r >= 0 for each of the {len(vit.blocks)} blocks, got {list(schedule)}")
    x = vit.norm_pre(vit.patch_drop(embed_tokens(vit, images)))
    size = None
    for blk, r in zip(vit.blocks, schedule):
        x, size = _block(blk, x, size, int(r), vit.num_prefix_tokens)
    fp32, x = fp32_region(x)
    with fp32:
        return vit.forward_head(vit.norm(x))


def _effective(requested: Sequence[int], patches: int) -> list[int]:
    """The merges each block actually makes: ``r`` capped at half the patch tokens it has."""
    out = []
    for r in requested:
        out.append(min(r, patches // 2))
        patches -= out[-1]
    return out


def _schedule_at(level: int, depth: int, patches: int) -> list[int]:
    """The ``level``-th schedule of the ladder: ``r`` everywhere, ``r + 1`` in the first ``j`` blocks
    (``r, j = divmod(level, depth)``), so each step moves the MACs by at most one block's worth of a token."""
    r, j = divmod(level, depth)
    return _effective([r + 1] * j + [r] * (depth - j), patches)


# per model object: keep -> (schedule, MACs); the model's lifetime bounds the entry's
_SCHEDULES: weakref.WeakKeyDictionary[nn.Module, dict[int | None, tuple[list[int], int]]] = weakref.WeakKeyDictionary()


def _macs(teacher: nn.Module, schedule: list[int]) -> int:
    return forward_macs(lambda m, x: token_merged_forward(m, x, schedule), teacher)


def _matched(teacher: nn.Module, keep: int | None) -> tuple[list[int], int]:
    """The schedule whose counted MACs are closest to ``masked_forward``'s at ``keep`` (ties: the cheaper)."""
    vit = _mergeable(teacher)
    patches, depth = vit.patch_embed.num_patches, len(vit.blocks)
    keep = resolve_keep(keep, patches)
    per_model = _SCHEDULES.setdefault(vit, {})
    if keep in per_model:
        return per_model[keep]
    if keep is None:
        per_model[keep] = ([0] * depth, masked_macs(teacher, None))
        return per_model[keep]
    target = masked_macs(teacher, keep)
    # MACs fall as the level rises; binary search for the first level at or under the target
    lo, hi = 0, (patches // 2) * depth  # at hi every block merges half its patch tokens
    counted = {lvl: _macs(teacher, _schedule_at(lvl, depth, patches)) for lvl in (lo, hi)}
    if counted[hi] > target:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        counted[mid] = _macs(teacher, _schedule_at(mid, depth, patches))
        lo, hi = (lo, mid) if counted[mid] <= target else (mid, hi)
    best = min((lo, hi), key=lambda lvl: (abs(counted[lvl] - target), counted[lvl]))
    per_model[keep] = (_schedule_at(best, depth, patches), counted[best])
    return per_model[keep]


def tome_schedule(teacher: nn.Module, keep: int | None) -> list[int]:
    """Tokens merged per block so the teacher's MACs match :func:`maskedkd.masked_forward` at ``keep``.

    The candidates form one ladder, ordered by cost: a constant ``r`` (the paper's schedule) with
    one more merge in the first ``j`` blocks (a decreasing schedule, fine enough that neighbouring
    rungs differ by a few percent of the MACs); the rung whose MACs, counted on
    :func:`token_merged_forward` itself, are closest to ``teacher_macs(teacher, keep)`` wins.
    ``keep=None`` or all patches gives all zeros. Budgets below the cheapest rung (every block
    merging half its patch tokens) are out of reach: the cheapest rung is returned, and
    :func:`tome_macs` then exceeds ``teacher_macs``. Searched once per model object and keep.

    Returns:
        list[int], one ``r`` per block; each is what that block merges (at most half its patch tokens).
    """
    return list(_matched(teacher, keep)[0])


def tome_macs(teacher: nn.Module, keep: int | None) -> int:
    """Multiply-adds per image of :func:`tome_forward` at ``keep`` (counted as :func:`maskedkd.teacher_macs`
    counts the masked teacher, matching and merging included)."""
    return _matched(teacher, keep)[1]


def tome_forward(teacher: nn.Module, images: torch.Tensor, keep: int | None) -> torch.Tensor:
    """Teacher logits with ToMe at the cost of ``masked_forward`` at ``keep`` patches.

    :func:`token_merged_forward` with :func:`tome_schedule`. At ``keep=None`` or all patches
    nothing is merged and the result equals ``teacher(images)`` bit for bit.

    Args:
        teacher: the teacher (eval mode), a model :func:`maskedkd.check_maskable` accepts.
        images: Tensor[B, C, H, W] at the teacher's input size.
        keep: the patch count whose masked-teacher MACs to match.

    Returns:
        Tensor[B, num_classes].
    """
    return token_merged_forward(teacher, images, tome_schedule(teacher, keep))
