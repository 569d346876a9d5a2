"""An explicit, independent ViT forward written from the weights, for checking maskedkd.

Nothing here calls timm's forward code: attention is an explicit softmax, the position
embedding is added before the gather, and each variant's token layout is spelled out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _ln(x, mod):
    return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)


def _maybe(mod, x):
    return x if isinstance(mod, torch.nn.Identity) else mod(x)


def block_attention_probs(blk, x):
    """Explicit attention probabilities [B, H, T, T] of one timm Block on tokens x."""
    a = blk.attn
    y = _ln(x, blk.norm1)
    B, T, D = y.shape
    qkv = F.linear(y, a.qkv.weight, a.qkv.bias).reshape(B, T, 3, a.num_heads, a.head_dim)
    q, k, v = qkv.unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if not isinstance(a.q_norm, torch.nn.Identity):
        q, k = _ln(q, a.q_norm), _ln(k, a.k_norm)
    scores = (q @ k.transpose(-1, -2)) / (a.head_dim**0.5)
    return torch.softmax(scores, dim=-1), v


def _block(blk, x):
    probs, v = block_attention_probs(blk, x)
    B, T, D = x.shape
    out = (probs @ v).transpose(1, 2).reshape(B, T, -1)
    out = F.linear(out, blk.attn.proj.weight, blk.attn.proj.bias)
    if hasattr(blk.ls1, "gamma"):
        out = out * blk.ls1.gamma
    x = x + out
    h = _ln(x, blk.norm2)
    h = F.linear(h, blk.mlp.fc1.weight, blk.mlp.fc1.bias)
    h = F.gelu(h)
    h = F.linear(h, blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    if hasattr(blk.ls2, "gamma"):
        h = h * blk.ls2.gamma
    return x + h


def embed(model, images):
    """Patch tokens + prefix tokens with position embeddings: (prefix[B,P,D], patches[B,N,D])."""
    pe = model.patch_embed.proj
    x = F.conv2d(images, pe.weight, pe.bias, stride=pe.stride)
    x = x.flatten(2).transpose(1, 2)  # [B, N, D]
    B = x.shape[0]
    prefix = [model.cls_token.expand(B, -1, -1)]
    if getattr(model, "dist_token", None) is not None:
        prefix.append(model.dist_token.expand(B, -1, -1))
    if model.reg_token is not None:
        prefix.append(model.reg_token.expand(B, -1, -1))
    prefix = torch.cat(prefix, dim=1)
    P = prefix.shape[1]
    if model.no_embed_class:  # DeiT-III: position embedding on patches only
        x = x + model.pos_embed
    else:
        prefix = prefix + model.pos_embed[:, :P]
        x = x + model.pos_embed[:, P:]
    return prefix, x


def tokens_before_last_block(model, images):
    prefix, patches = embed(model, images)
    x = torch.cat([prefix, patches], dim=1)
    for blk in model.blocks[:-1]:
        x = _block(blk, x)
    return x


def reference_forward(model, images, keep_idx=None):
    """Teacher logits from the kept patches, written out step by step."""
    prefix, patches = embed(model, images)
    if keep_idx is not None:
        patches = torch.stack([patches[b, keep_idx[b]] for b in range(patches.shape[0])])
    x = torch.cat([prefix, patches], dim=1)
    for blk in model.blocks:
        x = _block(blk, x)
    x = _ln(x, model.norm)
    logits = F.linear(x[:, 0], model.head.weight, model.head.bias)
    if getattr(model, "dist_token", None) is not None:
        logits_dist = F.linear(x[:, 1], model.head_dist.weight, model.head_dist.bias)
        logits = (logits + logits_dist) / 2
    return logits
