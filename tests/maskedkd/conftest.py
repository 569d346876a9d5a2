import pytest
import timm
import torch

SMALL = dict(img_size=32, patch_size=8, depth=2, num_classes=10)

# name -> (timm model name, extra kwargs): every variant masked_forward must support.
VARIANTS = {
    "vit": ("vit_tiny_patch16_224", {}),
    "deit": ("deit_tiny_patch16_224", {}),
    "deit3_no_embed_class": ("deit3_small_patch16_224", {"init_values": 0.1}),
    "registers": ("vit_small_patch16_224", {"reg_tokens": 4, "no_embed_class": True}),
    "qk_norm": ("vit_small_patch16_224", {"qk_norm": True}),
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
}


def make_model(variant: str, seed: int = 0):
    name, kw = VARIANTS[variant]
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **{**SMALL, **kw}).eval()
    # random, non-trivial weights everywhere (timm zero-inits some biases and the head)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture(params=sorted(VARIANTS))
def variant_model(request):
    return request.param, make_model(request.param)


@pytest.fixture
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
