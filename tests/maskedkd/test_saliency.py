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
