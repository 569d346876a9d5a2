import pytest
import timm
import torch

from maskedkd import masked_forward, select_keep

from .reference_vit import reference_forward


@torch.no_grad()
def test_matches_explicit_reference(variant_model, images):
    name, model = variant_model
    assert model.num_prefix_tokens >= 1
    n = model.patch_embed.num_patches  # 16
    gen = torch.Generator().manual_seed(7)
    for keep in (n, 8, 3, 1):
        keep_idx = select_keep(torch.rand(images.shape[0], n, generator=gen), keep)
        got = masked_forward(model, images, keep_idx)
        want = reference_forward(model, images, keep_idx)
        assert got.shape == (images.shape[0], 10)
        assert (got - want).abs().max().item() <= 1e-5, (name, keep)


@torch.no_grad()
def test_keep_all_is_bit_identical(variant_model, images):
    _, model = variant_model
    n = model.patch_embed.num_patches
    full = model(images)
    all_idx = torch.arange(n).expand(images.shape[0], n)
    assert torch.equal(masked_forward(model, images, all_idx), full)
    assert torch.equal(masked_forward(model, images, None), full)


@torch.no_grad()
def test_masking_changes_output_and_depends_on_which_patches(images):
    from .conftest import make_model

    model = make_model("deit")
    a = masked_forward(model, images, torch.arange(8).expand(3, 8))
    b = masked_forward(model, images, torch.arange(8, 16).expand(3, 8))
    assert not torch.allclose(a, b)


def test_position_embedding_follows_the_patch(images):
    """A kept patch keeps its own position embedding: permuting the kept indices' order is a no-op
    only up to the order of tokens, which attention ignores."""
    from .conftest import make_model

    model = make_model("vit")
    idx = torch.tensor([[1, 5, 9, 12]]).expand(3, 4)
    with torch.no_grad():
        a = masked_forward(model, images, idx)
        b = masked_forward(model, images, idx.flip(1))
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("swin_tiny_patch4_window7_224", {"img_size": 224}, "SwinTransformer"),
        ("vit_tiny_patch16_224", {"global_pool": "avg", "img_size": 32, "patch_size": 8, "depth": 1}, "global_pool='avg'"),
        ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg", "img_size": 32, "patch_size": 8, "depth": 1}, "class_token=False"),
        ("resnet18", {}, "ResNet"),
    ],
)
def test_unsupported_models_are_refused(name, kw, match):
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw)
    with pytest.raises(TypeError, match=match) as e:
        masked_forward(model, torch.randn(1, 3, 32, 32), torch.zeros(1, 1, dtype=torch.long))
    assert "supports" in str(e.value)


def test_bad_keep_idx_shape(images):
    from .conftest import make_model

    model = make_model("vit")
    with pytest.raises(ValueError, match="keep_idx"):
        masked_forward(model, images, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        masked_forward(model, images, torch.full((3, 2), 16))


@pytest.mark.parametrize("keep", [None, 6])
@torch.no_grad()
def test_head_runs_in_fp32_under_bf16_autocast(variant_model, images, keep):
    # the blocks run in bf16, the final norm and head in float32 on the blocks' output
    name, model = variant_model
    n = model.patch_embed.num_patches
    keep_idx = None if keep is None else torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(i))[:keep]
                                                      for i in range(images.shape[0])])
    seen, fc2 = [], []
    hooks = [model.blocks.register_forward_hook(lambda mod, args, out: seen.append(out)),
             model.blocks[-1].mlp.fc2.register_forward_hook(lambda mod, args, out: fc2.append(out))]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = masked_forward(model, images, keep_idx)
    finally:
        for h in hooks:
            h.remove()
    assert got.dtype == torch.float32, name
    assert fc2[0].dtype == torch.bfloat16, name  # the blocks did run under autocast
    want = model.forward_head(model.norm(seen[0].float()))
    assert torch.equal(got, want), name


@torch.no_grad()
def test_disabled_autocast_changes_nothing(variant_model, images):
    name, model = variant_model
    idx = torch.arange(5).expand(images.shape[0], 5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        off_all, off_kept = masked_forward(model, images), masked_forward(model, images, idx)
    assert torch.equal(off_all, model(images)), name
    assert torch.equal(off_kept, masked_forward(model, images, idx)), name
