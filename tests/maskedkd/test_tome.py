import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import ResPostBlock

from maskedkd import keep_indices, masked_forward, teacher_macs
from maskedkd.flops import forward_macs
from maskedkd.tome import bipartite_merge, token_merged_forward, tome_forward, tome_macs, tome_schedule

from .conftest import SMALL, make_model

# the shape of the committed Fashion-MNIST teachers: 7x7 = 49 patches, depth 4
FASHION = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=4, num_heads=3)
TEACHERS = Path(__file__).resolve().parents[2] / "stages/results/teachers"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def fashion_shaped(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **FASHION).eval()


@pytest.mark.parametrize("fused", [True, False])
@torch.no_grad()
def test_no_merging_is_the_plain_teacher_bit_for_bit(variant_model, images, fused):
    _, model = variant_model
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    n = model.patch_embed.num_patches
    full = model(images)
    assert torch.equal(tome_forward(model, images, n), full)
    assert torch.equal(tome_forward(model, images, None), full)
    assert tome_schedule(model, n) == [0] * len(model.blocks)
    assert tome_macs(model, n) == teacher_macs(model, None)


@torch.no_grad()
def test_under_autocast_no_merging_equals_masked_forward(images):
    model = make_model("distilled")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = masked_forward(model, images)
        got = tome_forward(model, images, None)
    assert got.dtype == torch.float32  # final norm and head in float32, as masked_forward
    assert torch.equal(got, want)


def _duplicate_patches(images: torch.Tensor, pairs, patch: int = 8) -> torch.Tensor:
    """Images whose patch ``b`` is a copy of patch ``a`` for each ``(a, b)`` (row-major on the grid)."""
    out = images.clone()
    cols = images.shape[-1] // patch
    for a, b in pairs:
        (ay, ax), (by, bx) = divmod(a, cols), divmod(b, cols)
        out[..., by * patch:(by + 1) * patch, bx * patch:(bx + 1) * patch] = \
            images[..., ay * patch:(ay + 1) * patch, ax * patch:(ax + 1) * patch]
    return out


@torch.no_grad()
def test_proportional_attention_makes_a_merged_duplicate_count_twice(variant_model, images):
    """Without position embeddings two identical patches stay identical tokens; merging each pair
    into one token of size 2 must then change nothing, which holds only with ``+ log(size)``."""
    name, model = variant_model
    model.pos_embed.zero_()
    dup = _duplicate_patches(images, [(0, 1), (2, 3)])  # patch 0, 2 in set A; 1, 3 in set B
    full = model(dup)
    merged = token_merged_forward(model, dup, [2, 0])
    assert (merged - full).abs().max().item() <= 1e-5, name
    # the same merge count on images without duplicates does change the logits
    assert (token_merged_forward(model, images, [2, 0]) - model(images)).abs().max().item() > 1e-3, name


def test_bipartite_merge_spares_the_prefix_and_keeps_mass():
    gen = torch.Generator().manual_seed(3)
    prefix, n, d = 2, 10, 8
    x = torch.randn(2, prefix + n, d, generator=gen)
    metric = torch.randn(2, prefix + n, 4, generator=gen)
    metric[:, :prefix] = metric[:, prefix + 1:prefix + 3]  # prefix keys equal patch keys: best matches if allowed
    size = torch.ones(2, prefix + n)
    size[:, prefix + 1] = 3.0
    out, out_size = bipartite_merge(x, size, metric, 3, prefix)
    assert out.shape == (2, prefix + n - 3, d)
    assert torch.equal(out[:, :prefix], x[:, :prefix]) and torch.equal(out_size[:, :prefix], size[:, :prefix])
    assert torch.equal(out_size.sum(1), size.sum(1))  # sizes add
    torch.testing.assert_close((out * out_size[..., None]).sum(1), (x * size[..., None]).sum(1))  # weighted averages
    capped, capped_size = bipartite_merge(x, None, metric, 100, prefix)  # at most half the patch tokens
    assert capped.shape[1] == prefix + n - n // 2 and capped_size.sum().item() == 2 * (prefix + n)
    same, no_size = bipartite_merge(x, None, metric, 0, prefix)
    assert same is x and no_size is None


def test_bipartite_merge_pairs_the_most_similar_tokens():
    # patches (A, B alternate): a0 b0 a1 b1; a1 is b0's twin, a0 is far from both b tokens
    metric = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [-1.0, -0.2]]])
    x = torch.tensor([[[1.0], [2.0], [4.0], [8.0]]])
    out, size = bipartite_merge(x, None, metric, 1, 0)
    assert out.flatten().tolist() == [1.0, 3.0, 8.0] and size.flatten().tolist() == [1.0, 2.0, 1.0]


@torch.no_grad()
def test_each_block_removes_r_tokens_after_attention_and_never_a_prefix_token(variant_model, images):
    name, model = variant_model
    p, n = model.num_prefix_tokens, model.patch_embed.num_patches
    seen: dict[str, list] = {"attn": [], "mlp": [], "norm2": []}
    hooks = []
    for blk in model.blocks:
        hooks.append(blk.norm1.register_forward_hook(lambda m, i, o: seen["attn"].append(i[0].shape[1])))
        hooks.append(blk.mlp.register_forward_hook(lambda m, i, o: seen["mlp"].append(i[0].shape[1])))
        hooks.append(blk.norm2.register_forward_hook(lambda m, i, o: seen["norm2"].append(i[0])))
    token_merged_forward(model, images, [3, 2])
    merged_block0 = seen["norm2"][0]
    seen["norm2"].clear()
    token_merged_forward(model, images, [0, 0])
    for h in hooks:
        h.remove()
    assert seen["attn"] == [p + n, p + n - 3, p + n, p + n]
    assert seen["mlp"] == [p + n - 3, p + n - 5, p + n, p + n]
    assert torch.equal(merged_block0[:, :p], seen["norm2"][0][:, :p]), name


@pytest.mark.parametrize("keep", [44, 36, 28, 24, 20])
def test_macs_match_masked_forward_along_a_keep_ladder(keep):
    """Reachable on a depth-4 teacher of 49 patches down to about keep 17 (every block then merges
    half its patch tokens); deeper teachers reach lower."""
    model = fashion_shaped()
    assert abs(tome_macs(model, keep) / teacher_macs(model, keep) - 1) <= 0.05
    assert tome_macs(model, keep) == forward_macs(lambda m, x: tome_forward(m, x, keep), model)


def test_macs_fall_as_r_grows_and_unreachable_budgets_get_the_cheapest_schedule():
    model = fashion_shaped()
    macs = [forward_macs(lambda m, x, r=r: token_merged_forward(m, x, [r] * 4), model) for r in range(0, 14, 2)]
    assert macs[0] == teacher_macs(model, None)
    assert all(a > b for a, b in zip(macs, macs[1:]))
    assert tome_schedule(model, 4) == [24, 12, 6, 3]  # half the patch tokens in every block
    assert tome_macs(model, 4) > teacher_macs(model, 4)


@torch.no_grad()
def test_rows_are_independent_and_runs_repeat(variant_model, images):
    _, model = variant_model
    whole = tome_forward(model, images, 10)
    assert torch.equal(whole, tome_forward(model, images, 10))
    for i in range(images.shape[0]):
        alone = tome_forward(model, images[i:i + 1], 10)
        assert (alone[0] - whole[i]).abs().max().item() <= 1e-5


def test_refuses_what_it_cannot_run(images):
    model = make_model("vit")
    with pytest.raises(ValueError, match="schedule"):
        token_merged_forward(model, images, [1])
    with pytest.raises(ValueError, match="schedule"):
        token_merged_forward(model, images, [1, -1])
    post = timm.create_model("vit_tiny_patch16_224", pretrained=False, block_fn=ResPostBlock, **SMALL)
    with pytest.raises(TypeError, match="ResPostBlock"):
        tome_forward(post, images, 8)
    pooled = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg", **SMALL)
    with pytest.raises(TypeError, match="supports"):
        tome_forward(pooled, images, 8)


@pytest.mark.skipif(not (TEACHERS / "results-v2-teacher.safetensors").exists() or not FMNIST.exists(),
                    reason="needs the committed teacher and Fashion-MNIST")
@torch.no_grad()
def test_tome_agrees_with_the_unmasked_teacher_more_than_random_masks():
    """The committed plain teacher on the first 500 test images at keep 24 of 49 (equal MACs):
    ToMe agreed with the unmasked teacher on 87.6%, random masks on 73.5% (3 draws)."""
    from safetensors.torch import load_file

    meta = json.loads((TEACHERS / "results-v2-teacher.json").read_text())
    model = timm.create_model(meta["model"], pretrained=False, **meta["kwargs"]).eval()
    model.load_state_dict(load_file(TEACHERS / "results-v2-teacher.safetensors"))
    with gzip.open(FMNIST / "t10k-images-idx3-ubyte.gz") as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:500]
    x = (torch.tensor(pixels, dtype=torch.float32) / 255 - 0.2860) / 0.3530  # the teacher's mean and std
    full = model(x).argmax(1)
    tome = (tome_forward(model, x, 24).argmax(1) == full).float().mean().item()
    idx = keep_indices("random", 24, grid=(7, 7), seeds=list(range(500)))
    rand = (masked_forward(model, x, idx).argmax(1) == full).float().mean().item()
    assert tome > rand + 0.05, (tome, rand)
