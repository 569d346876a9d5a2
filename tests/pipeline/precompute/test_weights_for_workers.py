"""Where workers load weights from: in place beside a local store; with the store in a bucket (a
local S3 server), a content-addressed copy under <store>/checkpoints/, uploaded once, which the
model loader reads back strictly."""

from __future__ import annotations

import torch

from pipeline.models import checkpoint_bytes, create_model, read_state_dict
from pipeline.precompute.spec import weights_for_workers

KW = {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "embed_dim": 32, "depth": 1, "num_heads": 2}


def test_weights_stay_in_place_beside_a_local_store(tmp_path):
    ckpt = tmp_path / "c0.pth"
    ckpt.write_bytes(b"x")
    assert weights_for_workers(str(tmp_path / "store"), ckpt) == str(ckpt)
    assert weights_for_workers((tmp_path / "store").as_uri(), ckpt) == str(ckpt)


def test_weights_are_published_once_to_a_remote_store(s3, tmp_path):
    model = create_model("vit_tiny_patch16_224", KW, seed=0)
    ckpt = tmp_path / "checkpoints" / "c0.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(checkpoint_bytes(model))
    uri = weights_for_workers("s3://labels/store", ckpt)
    assert uri.startswith("s3://labels/store/checkpoints/c0-") and uri.endswith(".pth")
    assert weights_for_workers("s3://labels/store", str(ckpt)) == uri
    assert s3.files("labels") == [uri.removeprefix("s3://")]  # one object, no temp key left
    loaded = create_model("vit_tiny_patch16_224", KW, weights=uri)
    for k, v in read_state_dict(ckpt).items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    ckpt.write_bytes(checkpoint_bytes(create_model("vit_tiny_patch16_224", KW, seed=1)))  # new bytes: a new name
    assert weights_for_workers("s3://labels/store", ckpt) != uri and len(s3.files("labels")) == 2
