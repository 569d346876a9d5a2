import torch

from maskedkd import cls_attention

from .reference_vit import block_attention_probs, tokens_before_last_block


@torch.no_grad()
def test_cls_attention_matches_explicit_attention_matrix(variant_model, images):
    name, model = variant_model
    got = cls_attention(model, images)
    x = tokens_before_last_block(model, images)
    probs, _ = block_attention_probs(model.blocks[-1], x)  # [B, H, T, T], softmax over all keys
    p = model.num_prefix_tokens
    want = probs[:, :, 0, p:].mean(dim=1)
    assert got.shape == (images.shape[0], model.patch_embed.num_patches)
    assert (got - want).abs().max().item() <= 1e-6, name
    # prefix columns are dropped, so rows sum to less than one
    assert bool((got.sum(dim=1) < 1).all())


@torch.no_grad()
def test_cls_attention_works_with_fused_attention_on(images):
    from .conftest import make_model

    model = make_model("vit")
    for blk in model.blocks:
        blk.attn.fused_attn = True
    a = cls_attention(model, images)
    for blk in model.blocks:
        blk.attn.fused_attn = False
    b = cls_attention(model, images)
    assert torch.allclose(a, b, atol=1e-6)


def _last_block_input(model, images, **autocast):
    """cls_attention under CPU autocast, and the tokens it fed into the last block's norm1."""
    seen = []
    hook = model.blocks[-1].norm1.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        with torch.autocast("cpu", **autocast):
            got = cls_attention(model, images)
    finally:
        hook.remove()
    return got, seen[0]


@torch.no_grad()
def test_cls_attention_q_dot_k_is_fp32_under_bf16_autocast(variant_model, images):
    # the blocks before the last run in bf16; from the last block's input on, the scores must be
    # exactly the float32 computation (a bf16 q.k is off by ~1e-3 and flips near-tie keep sets)
    name, model = variant_model
    got, x = _last_block_input(model, images, dtype=torch.bfloat16)
    assert got.dtype == torch.float32
    probs, _ = block_attention_probs(model.blocks[-1], x.float())
    want = probs[:, :, 0, model.num_prefix_tokens:].mean(dim=1)
    assert (got - want).abs().max().item() <= 1e-6, name
    assert torch.equal(got.topk(8).indices.sort().values, want.topk(8).indices.sort().values), name
    # the check can fail: the same q.k in bf16 is visibly coarser
    with torch.autocast("cpu", dtype=torch.bfloat16):
        coarse, _ = block_attention_probs(model.blocks[-1], x)
    assert (coarse[:, :, 0, model.num_prefix_tokens:].mean(dim=1).float() - want).abs().max().item() > 1e-5


@torch.no_grad()
def test_keep_sets_under_bf16_autocast_equal_fp32_on_a_tiny_vit():
    from maskedkd import select_keep

    from .conftest import make_model

    model = make_model("vit")
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    fp32 = cls_attention(model, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = cls_attention(model, images)
    assert bf16.dtype == torch.float32
    for keep in (4, 8, 12):
        assert torch.equal(select_keep(bf16, keep).sort(dim=1).values, select_keep(fp32, keep).sort(dim=1).values)


@torch.no_grad()
def test_cls_attention_without_autocast_is_unchanged(images):
    # a disabled autocast context is no autocast: the float32 path is taken bit for bit
    from .conftest import make_model

    model = make_model("qk_norm")
    plain = cls_attention(model, images)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        off = cls_attention(model, images)
    assert torch.equal(plain, off)
