import pytest
import timm
import torch

from pipeline.errors import ConfigError, DataError
from pipeline.models import (
    create_model,
    load_weights,
    model_fingerprint,
    read_state_dict,
    save_checkpoint,
)

KW = dict(img_size=32, patch_size=8, depth=1, num_classes=10)


def test_seeded_init_is_reproducible_and_seed_dependent():
    a = create_model("vit_tiny_patch16_224", KW, seed=0)
    b = create_model("vit_tiny_patch16_224", KW, seed=0)
    c = create_model("vit_tiny_patch16_224", KW, seed=1)
    assert model_fingerprint(a, "x") == model_fingerprint(b, "x") != model_fingerprint(c, "x")
    assert model_fingerprint(a, "x") != model_fingerprint(a, "y")


def test_checkpoint_is_a_plain_timm_state_dict_with_stable_bytes(tmp_path):
    m = create_model("vit_tiny_patch16_224", KW, seed=0)
    h1 = save_checkpoint(m, tmp_path / "a.pth")
    h2 = save_checkpoint(m, tmp_path / "b.pth")
    assert h1 == h2
    loaded = timm.create_model("vit_tiny_patch16_224", pretrained=False, checkpoint_path=str(tmp_path / "a.pth"), **KW)
    assert model_fingerprint(loaded, "x") == model_fingerprint(m, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.pth"]  # no temp files left


def test_safetensors_and_wrapped_checkpoints(tmp_path):
    from safetensors.torch import save_file

    m = create_model("vit_tiny_patch16_224", KW, seed=3)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save({"model": m.state_dict()}, tmp_path / "wrapped.pth")
    for f in ("w.safetensors", "wrapped.pth"):
        other = create_model("vit_tiny_patch16_224", KW, weights=tmp_path / f)
        assert model_fingerprint(other, "x") == model_fingerprint(m, "x")


def test_bad_weights_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.pth: weights file not found"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pth: cannot read weights"):
        read_state_dict(tmp_path / "junk.pth")
    other = create_model("vit_tiny_patch16_224", {**KW, "depth": 2}, seed=0)
    save_checkpoint(other, tmp_path / "deeper.pth")
    with pytest.raises(DataError, match="deeper.pth: weights do not fit VisionTransformer"):
        load_weights(create_model("vit_tiny_patch16_224", KW, seed=0), tmp_path / "deeper.pth")


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(DataError, match="evil.pth: cannot read weights"):
        read_state_dict(tmp_path / "evil.pth")


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown timm model 'no_such_vit'"):
        create_model("no_such_vit")
