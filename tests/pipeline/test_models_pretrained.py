"""Pretrained weights through timm's loader (pipeline/models.py: pretrained_file, load_pretrained),
without network: a local file, a ``local-dir:`` folder, a populated Hugging Face cache offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models._hub import load_state_dict_from_path, save_for_hf

from pipeline._fingerprint import sha256_file
from pipeline.errors import ConfigError, DataError
from pipeline.models import (
    create_model,
    holds_model,
    load_pretrained,
    model_fingerprint,
    pretrained_file,
    save_checkpoint,
    state_dict_fingerprint,
)

VIT = "vit_tiny_patch16_224"
KW = dict(img_size=32, patch_size=8, depth=1, num_classes=10)


def _fp(model) -> str:
    return model_fingerprint(model, "x")


def _body(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


def test_a_checkpoint_of_the_model_loads_as_it_was_saved(tmp_path):
    m = create_model(VIT, KW, seed=0)
    save_checkpoint(m, tmp_path / "w.pth")
    torch.save(m.state_dict(), tmp_path / "w.bin")
    for f in ("w.pth", "w.bin"):
        loaded = load_pretrained(VIT, KW, tmp_path / f, pretrained=False)
        assert _fp(loaded) == _fp(m) and holds_model(tmp_path / f, loaded)
    with pytest.raises(DataError, match="w.pth: weights do not fit"):
        load_pretrained(VIT, {**KW, "depth": 2}, tmp_path / "w.pth", pretrained=False)
    with pytest.raises(DataError, match="nope.pth: weights file not found"):
        load_pretrained(VIT, KW, tmp_path / "nope.pth", pretrained=False)


def test_a_checkpoint_saved_at_another_img_size_gets_timms_position_embedding(tmp_path):
    m = create_model(VIT, KW, seed=0)  # 4x4 grid
    save_checkpoint(m, tmp_path / "w.pth")
    big = load_pretrained(VIT, {**KW, "img_size": 48}, tmp_path / "w.pth", pretrained=False)  # 6x6 grid
    want = resample_abs_pos_embed(m.pos_embed.detach(), (6, 6), (4, 4), num_prefix_tokens=1)
    assert big.pos_embed.shape == (1, 37, 192) and torch.equal(big.pos_embed.detach(), want)
    assert torch.equal(big.blocks[0].attn.qkv.weight, m.blocks[0].attn.qkv.weight)
    assert not holds_model(tmp_path / "w.pth", big)  # workers need a converted checkpoint of it


def test_local_dir_loads_the_file_timm_picks_and_that_file_is_the_one_hashed(tmp_path):
    m = create_model(VIT, KW, seed=0)
    save_for_hf(m, str(tmp_path / "ld"), safe_serialization=True, model_args=KW)
    # a second checkpoint in the folder that timm must not pick
    torch.save(create_model(VIT, KW, seed=1).state_dict(), tmp_path / "ld" / "pytorch_model.bin")
    name = f"local-dir:{tmp_path / 'ld'}"
    file = pretrained_file(name)
    assert file == tmp_path / "ld" / "model.safetensors"
    assert state_dict_fingerprint(load_state_dict_from_path(tmp_path / "ld")) == state_dict_fingerprint(m.state_dict())
    loaded = load_pretrained(name, {}, file, pretrained=True)
    assert _fp(loaded) == _fp(m) and loaded.num_classes == 10
    assert sha256_file(file) != sha256_file(tmp_path / "ld" / "pytorch_model.bin")


def test_a_frozen_head_is_kept_and_a_fine_tune_reinitialises_it_seeded(tmp_path):
    m = create_model(VIT, KW, seed=0)
    save_for_hf(m, str(tmp_path / "ld"), safe_serialization=True, model_args=KW)
    name, file = f"local-dir:{tmp_path / 'ld'}", tmp_path / "ld" / "model.safetensors"
    with pytest.raises(ConfigError, match="pretrained classifier has 10 classes, kwargs.num_classes 5"):
        load_pretrained(name, {"num_classes": 5}, file, pretrained=True)
    a = load_pretrained(name, {}, file, pretrained=True, num_classes=5, seed=0)
    b = load_pretrained(name, {}, file, pretrained=True, num_classes=5, seed=0)
    c = load_pretrained(name, {}, file, pretrained=True, num_classes=5, seed=1)
    assert a.head.weight.shape == (5, 192) and _fp(a) == _fp(b) != _fp(c)
    assert state_dict_fingerprint(_body(a)) == state_dict_fingerprint(_body(m))
    same = load_pretrained(name, {}, file, pretrained=True, num_classes=10, seed=3)  # same classes: head kept
    assert _fp(same) == _fp(m)


def _hub_repo(hub: Path, repo: str, tensors: dict, config: dict | None = None, rev: str = "a" * 40) -> Path:
    """A Hugging Face cache entry as huggingface_hub lays it out: refs/main -> snapshots/<rev>/."""
    d = hub / f"models--{repo.replace('/', '--')}"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(rev)
    snap = d / "snapshots" / rev
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, snap / "model.safetensors")
    if config is not None:
        (snap / "config.json").write_text(json.dumps(config))
    return snap / "model.safetensors"


def test_the_hugging_face_cache_offline_for_a_hub_name_and_a_registry_tag(tmp_path):
    hub = tmp_path / "hub"
    small = create_model(VIT, KW, seed=0)
    own = _hub_repo(hub, "me/tiny", small.state_dict(), {
        "architecture": VIT, "num_classes": 10, "model_args": {"img_size": 32, "patch_size": 8, "depth": 1},
        "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}})
    kw1000 = {**KW, "num_classes": 1000}
    tagged = create_model(VIT, kw1000, seed=2)
    # vit_tiny_patch16_224's default tag names this hub repository (pretrained_cfg hf_hub_id)
    tag = _hub_repo(hub, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", tagged.state_dict())
    code = (
        "import json, sys\n"
        "from pipeline.models import load_pretrained, model_fingerprint, pretrained_file\n"
        "out = []\n"
        f"for name, kw in (('hf-hub:me/tiny', {{}}), ({VIT!r}, {kw1000!r})):\n"
        "    f = pretrained_file(name, kw)\n"
        "    out.append([str(f), model_fingerprint(load_pretrained(name, kw, f, pretrained=True), 'x')])\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub), PYTHONPATH=str(Path(__file__).parents[2]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == [[str(own), _fp(small)], [str(tag), _fp(tagged)]]
    # not in the cache, offline: says where it looked
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")
    proc = subprocess.run([sys.executable, "-c", "from pipeline.models import pretrained_file\n"
                           f"pretrained_file({VIT!r})"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "cannot fetch its pretrained weights" in proc.stderr
    assert "HF_HUB_OFFLINE=1" in proc.stderr
