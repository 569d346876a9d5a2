"""Hostile shards: every kind of bad sample, a truncated tar; through ``data verify --decode``,
``precompute`` and ``run``. Each bad sample is skipped and reported (or the command refuses)
naming the shard and the key; nothing in a shard is executed; nothing is written outside the
store and the run folder."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from pipeline._fingerprint import sha256_file
from pipeline._lock import load_lock
from pipeline.data.manifest import load_manifest
from tests.pipeline.data.helpers import real_fashion_mnist_subset
from tests.reliability.helpers import TINY, cli, main_in_process, stage
from tests.reliability.shards import bad_samples, write_tar

pytestmark = pytest.mark.reliability

BAD_SHARD = "train-000001.tar"


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A real Fashion-MNIST dataset whose second training shard starts with every bad sample."""
    work = tmp_path_factory.mktemp("hostile")
    root = real_fashion_mnist_subset(work / "data", 200, 32, 100)
    marker = work / "EXECUTED"
    bad = bad_samples(marker)
    shard = root / BAD_SHARD
    with tarfile.open(shard) as tar:
        good = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    write_tar(shard, [m for _, members, _ in bad for m in members] + good)
    manifest = load_manifest(root)
    groups = len(bad) + len(good) // 2
    entries = manifest.splits["train"]["shards"]
    entries[BAD_SHARD] = {"samples": groups, "bytes": shard.stat().st_size, "sha256": sha256_file(shard)}
    manifest.splits["train"]["num_samples"] = sum(e["samples"] for e in entries.values())
    manifest.save(root)
    return {"work": work, "root": root, "marker": marker, "bad": bad}


def _expected_skips(bad) -> dict[str, str]:
    """key -> what it is, for every sample that must be skipped (the first 'dup' is a good one)."""
    out, seen = {}, set()
    for key, members, what in bad:
        if key == "spacer" or key == "with_pickle" or (key == "dup" and key not in seen):
            seen.add(key)
            continue
        out[key] = what
    return out


def _no_escape(h) -> None:
    assert not h["marker"].exists(), "a shard member was unpickled / executed"
    assert not Path("/tmp/abs_key.png").exists() and not (h["root"].parent / "escape.png").exists()
    assert not list(h["work"].parent.glob("escape*"))


def test_data_verify_decode_names_shard_and_key(hostile, tally):
    before = _tree(hostile["work"])
    code, out = main_in_process("data", "verify", str(hostile["root"]), "--decode", cwd=hostile["work"])
    assert code == 1, out
    for key, what in _expected_skips(hostile["bad"]).items():
        assert f"{BAD_SHARD}: sample {key} unusable" in out, (key, what, out)
        tally("shards", what, "`data verify --decode`: reported by shard + key, exit 1")
    _no_escape(hostile)
    assert _tree(hostile["work"]) == before


@pytest.mark.parametrize("cut", ["mid-member", "member-boundary", "empty"])
def test_truncated_tar_is_named(hostile, tmp_path, cut, tally):
    root = tmp_path / "data"
    shutil.copytree(hostile["root"], root)
    shard = root / "train-000000.tar"
    data = shard.read_bytes()
    keep = {"mid-member": len(data) // 2 + 100, "member-boundary": len(data) - 1024 * 3, "empty": 0}[cut]
    if cut == "member-boundary":  # cut just before a member header: a valid-looking shorter tar
        with tarfile.open(shard) as tar:
            keep = tar.getmembers()[len(tar.getmembers()) // 2].offset
    shard.write_bytes(data[:keep])
    code, out = main_in_process("data", "verify", str(root), "--decode", cwd=tmp_path)
    assert code == 1, out
    assert "train-000000.tar" in out and ("truncated" in out or "bytes, manifest says" in out), out
    tally("shards", f"truncated tar ({cut})", "`data verify`: names the shard (truncated / size differs), exit 1")


@pytest.mark.slow
def test_precompute_skips_and_run_refuses(hostile, tally):
    """precompute writes partitions of the usable samples only and records every skipped key;
    training refuses the shard (fewer usable samples than its manifest), naming shard and keys."""
    from safetensors.torch import save_file

    from pipeline.models import create_model

    work = hostile["work"]
    teacher = create_model(TINY["teacher"]["model"], TINY["teacher"]["kwargs"], seed=0)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(work / "teacher.safetensors"))
    cfg = stage(work / "h.yaml", name="hostile", teacher={"model": TINY["teacher"]["model"],
                                                          "kwargs": TINY["teacher"]["kwargs"],
                                                          "weights": "teacher.safetensors"})
    before = {p for p in _tree(work) if not p.startswith(("store", "runs"))}
    r = cli("precompute", cfg.name, "--segment", "0", cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    lock = load_lock(work / "runs/hostile/run.lock.json")
    info = lock["stages"]["precompute-0"]["info"]
    skipped = {s["key"]: s["reason"] for s in info["skipped_samples"]}
    expected = _expected_skips(hostile["bad"])
    assert set(skipped) == set(expected), skipped
    part = next(p for p in lock["stages"]["precompute-0"]["partitions"] if "train-000001" in p["path"])
    from pipeline.labels import open_partition

    with open_partition(part["path"]) as p:
        keys = p.read_all(columns=("keys",)).keys
    assert len(keys) == len(set(keys)) == part["rows"] and set(keys) & set(expected) == {"dup"}  # its first copy
    for key, what in expected.items():
        tally("shards", what, "`precompute`: skipped, recorded by key in the run lock (info.skipped_samples)")

    r = cli("run", cfg.name, cwd=work)
    out = r.stdout + r.stderr
    # the trainer meets the partition first: it has fewer rows than the shard's manifest count
    assert r.returncode == 4, out
    assert "train-000001" in out and "partition has 103 rows" in out and "116 samples" in out, out
    assert not (work / "runs/hostile/checkpoints/c1.pth").exists()
    tally("shards", "hostile shard in a training run (after precompute)",
          "`run`: exit 4, the partition of that shard has fewer rows than its manifest count; no checkpoint")

    # teacher training reads the shard itself: refused naming the shard and the skipped keys
    cfg = stage(work / "t.yaml", name="hostile-t")
    r = cli("run", cfg.name, cwd=work)
    out = r.stdout + r.stderr
    assert r.returncode == 3, out
    assert f"shard {hostile['root'] / BAD_SHARD}: 103 usable samples, expected at least 116" in out, out
    assert "corrupt_png" in out, out
    tally("shards", "hostile shard in teacher training", "`run`: exit 3 naming the shard and the first skipped keys")
    _no_escape(hostile)
    assert {p for p in _tree(work) if not p.startswith(("store", "runs"))} == before | {"t.yaml"}
