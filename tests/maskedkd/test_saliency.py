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


def _todays_cls_attention(model, images):
    """cls_attention as it was before the downscaled view (issue 24 item 4): the masks must not move."""
    from maskedkd._vit import check_maskable, embed_tokens, fp32_region

    vit = check_maskable(model)
    x = vit.norm_pre(vit.patch_drop(embed_tokens(vit, images)))
    for blk in vit.blocks[:-1]:
        x = blk(x)
    last = vit.blocks[-1]
    attn = last.attn
    fp32, x = fp32_region(x)
    with fp32:
        y = last.norm1(x)
        B, T, _ = y.shape
        qkv = attn.qkv(y).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)
    return logits.float().softmax(dim=-1)[:, :, 0, vit.num_prefix_tokens:].mean(dim=1)


@torch.no_grad()
def test_cls_attention_at_the_models_size_is_bit_identical_to_before(variant_model, images):
    from maskedkd import keep_indices, saliency_on_grid

    name, model = variant_model
    today = _todays_cls_attention(model, images)
    assert torch.equal(cls_attention(model, images), today), name
    grid = tuple(model.patch_embed.grid_size)
    assert torch.equal(saliency_on_grid(model, images, grid, scale=1.0), today)
    want = today.topk(8, dim=1).indices.sort(dim=1).values
    assert torch.equal(keep_indices("student", 8, grid=grid, seeds=[0, 1, 2], student=model, images=images), want)


@torch.no_grad()
def test_cls_attention_on_a_downscaled_view_resamples_the_position_embedding_as_timm_does(variant_model, images):
    import timm

    from .conftest import SMALL, VARIANTS

    name, model = variant_model
    small = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", antialias=True)
    got = cls_attention(model, small)
    # the reference: timm's own dynamic_img_size embedding, then the explicit attention matrix
    tname, kw = VARIANTS[name]
    dynamic = timm.create_model(tname, pretrained=False, dynamic_img_size=True, **{**SMALL, **kw}).eval()
    dynamic.load_state_dict(model.state_dict())
    x = dynamic.norm_pre(dynamic._pos_embed(dynamic.patch_embed(small)))
    for blk in dynamic.blocks[:-1]:
        x = blk(x)
    probs, _ = block_attention_probs(dynamic.blocks[-1], x)
    want = probs[:, :, 0, model.num_prefix_tokens:].mean(dim=1)
    assert got.shape == (3, 4) and (got - want).abs().max().item() <= 1e-6, name


def test_saliency_size_keeps_whole_patches():
    import pytest
    import timm

    from maskedkd import saliency_size

    with torch.device("meta"):
        deit = timm.create_model("deit_small_patch16_224")
        fm = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, embed_dim=48, depth=1,
                               num_heads=3)
    assert saliency_size(deit) == saliency_size(deit, 1.0) == (224, 224)
    assert saliency_size(deit, 0.5) == (112, 112)  # 7 x 7 patches
    assert saliency_size(fm, 0.5) == (16, 16)  # 7 x 7 patches -> round(3.5) = 4 x 4
    assert saliency_size(fm, 0.01) == (4, 4)  # at least one patch a side
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="saliency scale"):
            saliency_size(fm, bad)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1).eval()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        cls_attention(model, torch.zeros(1, 3, 20, 20))
