"""The precompute task's data path (pipeline/precompute/feed.py): one task per shard for all view
epochs of a segment, the same partitions as one view epoch at a time, and the decode/render
pool keeping the reader's order, skips and errors."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from maskedkd.rendering import render_batch
from maskedkd.views import ViewSpec, shard_views
from pipeline._fingerprint import sha256_file
from pipeline.config import load_config
from pipeline.data.shards import read_shard
from pipeline.errors import StoreError
from pipeline.labels import paths
from pipeline.labels.contract import LabelRef, RenderSpec, ShardRef
from pipeline.precompute import feed
from pipeline.precompute.run import group_by_shard
from pipeline.precompute.task import run_partition, run_shard
from pipeline.train.stream import load_shard
from tests.pipeline.data.helpers import encode, rgb, write_raw_tar
from tests.pipeline.precompute.conftest import SHARD, stage_doc
from tests.pipeline.precompute.helpers import run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/pipeline/conftest.py

# mixing partners across batch boundaries (window 8, batch 32 would align: batch 12 does not),
# random erasing and RandAugment: every float step the device applies
MIXED_VIEWS = {"seed": 0, "pool": "epochs", "scale": [0.6, 1.0], "hflip": 0.5, "reprob": 0.5, "mixup": 0.8,
               "cutmix": 1.0, "mix_window": 8, "auto_augment": "rand-m9-mstd0.5-inc1", "shift": 2}


def _mixed_stage(tmp_path: Path, dataset: Path, ckpts: dict, store: str, feed_workers: int):
    doc = stage_doc(name="feed", data_root=dataset, store=tmp_path / store, teacher_weights=ckpts["teacher"],
                    run_dir=tmp_path / "runs", epochs=2)
    doc["views"] = MIXED_VIEWS
    doc["compute"].update(batch_size=12, feed_workers=feed_workers)
    doc["labels"]["temperatures"] = [1.0, 2.0]
    path = tmp_path / f"{store}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path)


def _shas(tasks) -> dict:
    return {(t.shard, t.view_epoch): sha256_file(t.path) for t in tasks}


@pytest.mark.slow
def test_a_two_view_epoch_segment_is_one_task_per_shard_with_per_view_epoch_partitions(
        tmp_path, dataset, ckpts, tasks, cluster):
    grouped_cfg = _mixed_stage(tmp_path, dataset, ckpts, "grouped", feed_workers=2)
    ts = tasks(grouped_cfg)
    assert sorted({t.view_epoch for t in ts}) == [0, 1] and len(ts) == 4
    items = group_by_shard(ts)
    assert [[t.view_epoch for t in item["tasks"]] for item in items] == [[0, 1], [0, 1]]
    assert len({t.shard for item in items for t in item["tasks"]}) == len(items) == 2
    # 2 shards for 2 task slots: too few to balance, so one item per (shard, view epoch) again
    assert [[(t.shard, t.view_epoch) for t in item["tasks"]] for item in group_by_shard(ts, slots=2)] == \
        [[(t.shard, t.view_epoch)] for t in ts]

    out = run(ts, cluster, grouped_cfg, "grouped")
    assert [(r["shard"], r["view_epoch"]) for r in out["results"]] == [(t.shard, t.view_epoch) for t in ts]
    assert out["rows"] == 4 * SHARD and out["cached"] == 0
    assert out["teacher_forwards"] == 4 * SHARD and out["student_forwards"] == 4 * SHARD

    # the same partitions, one (shard, view epoch) at a time in this process, with one feed thread
    single_cfg = _mixed_stage(tmp_path, dataset, ckpts, "single", feed_workers=1)
    singles = [replace(t, device="cpu") for t in tasks(single_cfg)]
    assert [t.fingerprints for t in singles] == [t.fingerprints for t in ts]  # feed threads are no input
    for t in singles:
        assert run_partition({"task": t})["rows"] == SHARD
    assert _shas(singles) == _shas(ts)

    # the shard's rows as maskedkd renders them, independently of the feed: first rows of view epoch 1
    t = singles[1]
    samples = list(read_shard(t.shard_path))
    views = shard_views(ViewSpec.from_dict(t.view_spec), t.view_seed, t.view_epoch, [s.key for s in samples],
                        shard=t.shard)
    r = t.teacher.render
    by_key = {s.key: (s.image, v) for s, v in zip(samples, views)}
    with ThreadPoolExecutor(2) as pool:
        pixels = feed.EpochPixels([s.image for s in samples], views, [r, t.student.render], pool, ahead=24)
        rows = np.array([3, 40, 11, 12, 95, 0])  # any order, partners anywhere
        got = pixels.batch(rows, r, "cpu")
    want = render_batch([samples[i].image for i in rows], [views[i] for i in rows], r.size, mean=r.mean, std=r.std,
                        interpolation=r.interpolation, partners=lambda k: by_key[k])
    assert any(views[i].partner for i in rows) and torch.equal(got, want)


def test_a_retried_task_computes_only_the_partitions_not_written_yet(stage, tasks):
    cfg = stage("retry", epochs=2)
    ts = [replace(t, device="cpu", limit=16) for t in tasks(cfg)]
    ts = [replace(t, path=paths.partition_path(cfg.labels.store, shard=t.shard, view_epoch=t.view_epoch,
                                               fingerprints=t.fingerprints)) for t in ts]
    first = next(item for item in group_by_shard(ts))
    run_partition({"task": first["tasks"][1]})  # the attempt that died had written view epoch 1
    before = sha256_file(first["tasks"][1].path)
    out = run_shard(first)
    assert [r["cached"] for r in out["partitions"]] == [False, True]
    assert out["rows"] == 32 and sha256_file(first["tasks"][1].path) == before


def _shard_with_problems(tmp_path: Path) -> Path:
    members = []
    for i in range(12):
        key = f"s_{i:03d}"
        data = encode(rgb(i), "JPEG" if i % 2 else "PNG")
        if i == 3:
            data = data[: len(data) // 3]  # truncated: PIL fails while decoding
        members.append((f"{key}.{'jpg' if i % 2 else 'png'}", data))
        members.append((f"{key}.cls", b"x" if i == 6 else str(i % 4).encode()))
    return write_raw_tar(tmp_path / "bad-000000.tar", members)


@pytest.mark.parametrize("limit", [None, 7])
def test_decoding_on_threads_keeps_order_skips_and_reports(tmp_path, limit):
    path = _shard_with_problems(tmp_path)
    plain_report: list = []
    plain = list(read_shard(path, report=plain_report, limit=limit, sha256=sha256_file(path)))
    pooled_report: list = []
    with ThreadPoolExecutor(2) as pool:
        pooled = feed.decode_shard(str(path), pool=pool, report=pooled_report, limit=limit, sha256=sha256_file(path))
    assert [s.key for s in pooled] == [s.key for s in plain]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(pooled, plain))
    assert pooled_report == plain_report
    assert [k for k, _ in plain_report] == ["s_003", "s_006"]  # both before the 7th usable sample
    assert len(plain) == (10 if limit is None else 7)


def test_an_exception_in_a_render_thread_surfaces_as_itself(stage, tasks, monkeypatch):
    cfg = stage("boom")
    t = replace(tasks(cfg)[0], device="cpu", feed_workers=2)
    threads = set()
    real = feed.render_pixels

    def broken(image, view, spec, out):
        threads.add(threading.current_thread().name)
        if view.key == "train_000040":
            raise OSError("image file is truncated (render)")
        return real(image, view, spec, out)

    monkeypatch.setattr(feed, "render_pixels", broken)
    with pytest.raises(OSError, match="truncated"):
        run_partition({"task": t})
    assert threads and all(name.startswith("mkd-feed") for name in threads)  # it ran on the pool
    assert not Path(t.path).exists()


def test_decode_cuda_is_refused_without_cuda(tmp_path):
    path = _shard_with_problems(tmp_path)
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="compute.decode: cuda"):
        feed.decode_shard(str(path), pool=None, decode="cuda", device="cpu")


def test_student_and_teacher_at_one_size_share_their_pixels():
    a = RenderSpec(28, (0.5,), (0.5,), "bilinear")
    b = RenderSpec(28, (0.2860,), (0.3530,), "bilinear")
    assert feed.pixel_spec(a, randaugment=False) == feed.pixel_spec(b, randaugment=False)
    assert feed.pixel_spec(a) != feed.pixel_spec(b)  # RandAugment fills with the mean
    assert feed.pixel_spec(a, False) != feed.pixel_spec(RenderSpec(32, (0.5,), (0.5,), "bilinear"), False)


def test_cuda_decoding_gets_its_own_view_fingerprint_and_needs_a_gpu_device(tmp_path, dataset, ckpts, tasks):
    from pipeline.errors import ConfigError
    from pipeline.precompute.spec import task_fingerprints

    cfg = _mixed_stage(tmp_path, dataset, ckpts, "fp", feed_workers=1)
    t = tasks(cfg)[0]
    assert task_fingerprints(replace(t, feed_workers=2)) == t.fingerprints
    cuda = task_fingerprints(replace(t, decode="cuda"))
    assert cuda["view"] != t.fingerprints["view"] and {k: v for k, v in cuda.items() if k != "view"} == {
        k: v for k, v in t.fingerprints.items() if k != "view"}
    doc = yaml.safe_load((tmp_path / "fp.yaml").read_text())
    doc["compute"]["decode"] = "cuda"  # with device: cpu
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="decode"):
        load_config(tmp_path / "bad.yaml")


def test_torch_resizing_renders_from_arrays_made_once_as_render_batch_does(dataset):
    shard = dataset / "train-000000.tar"
    samples = list(read_shard(shard))[:40]
    spec = ViewSpec.from_dict({k: v for k, v in MIXED_VIEWS.items() if k not in ("seed", "pool")})
    views = shard_views(spec, 0, 1, [s.key for s in samples])
    r = RenderSpec(28, (0.2860,), (0.3530,), "bilinear", "torch")
    assert feed.with_pixel_arrays(samples, [RenderSpec(28, (0.5,), (0.5,), "bilinear"), r], None) is samples
    with ThreadPoolExecutor(2) as pool:
        arrays = feed.with_pixel_arrays(samples, [r], pool)
        assert [s.key for s in arrays] == [s.key for s in samples] and isinstance(arrays[0].image, np.ndarray)
        pixels = feed.EpochPixels([s.image for s in arrays], views, [r], pool, ahead=8)
        rows = np.array([3, 17, 11, 12, 35, 0])
        got = pixels.batch(rows, r, "cpu")
    by_key = {s.key: (s.image, v) for s, v in zip(samples, views)}
    want = render_batch([samples[i].image for i in rows], [views[i] for i in rows], r.size, mean=r.mean, std=r.std,
                        interpolation=r.interpolation, partners=lambda k: by_key[k], resize="torch")
    pil = render_batch([samples[i].image for i in rows], [views[i] for i in rows], r.size, mean=r.mean, std=r.std,
                       interpolation=r.interpolation, partners=lambda k: by_key[k])
    assert torch.equal(got, want) and not torch.equal(want, pil)


def test_torch_resizing_gets_its_own_view_fingerprint(tmp_path, dataset, ckpts, tasks):
    from pipeline.precompute.spec import task_fingerprints

    cfg = _mixed_stage(tmp_path, dataset, ckpts, "fp", feed_workers=1)
    t = tasks(cfg)[0]
    assert t.teacher.render.resize == "pil"
    torch_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"resize": "torch"})})
    u = tasks(torch_cfg)[0]
    assert u.teacher.render.resize == u.student.render.resize == "torch"
    assert u.fingerprints["view"] != t.fingerprints["view"]
    assert {k: v for k, v in u.fingerprints.items() if k != "view"} == {
        k: v for k, v in t.fingerprints.items() if k != "view"}
    assert task_fingerprints(u) == u.fingerprints


def _encoded(img, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_what_nvjpeg_cannot_decode_falls_back_to_pil_and_no_row_is_dropped():
    # a stand-in for nvJPEG: decodes RGB JPEGs, but refuses one (as nvJPEG refuses some files)
    import numpy as np
    from PIL import Image

    from pipeline.data.shards import RawSample
    from pipeline.precompute.feed import decode_raws, nvjpeg_can_decode

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8), "RGB")
    jpeg, refused = _encoded(rgb, "JPEG", quality=90), _encoded(rgb, "JPEG", quality=50)
    raws = [RawSample("a", "jpg", jpeg, 0), RawSample("cmyk", "jpeg", _encoded(rgb.convert("CMYK"), "JPEG"), 1),
            RawSample("png", "jpeg", _encoded(rgb, "PNG"), 2), RawSample("refused", "jpg", refused, 3),
            RawSample("broken", "jpg", jpeg[:40], 4), RawSample("b", "jpg", jpeg, 5)]
    assert [nvjpeg_can_decode(r.image_bytes) for r in raws] == [True, False, False, True, False, True]
    calls = []

    def nvjpeg(datas):
        calls.append(len(datas))
        if any(bytes(d.numpy()) == refused for d in datas):
            raise RuntimeError("nvjpeg: unsupported")
        return [torch.from_numpy(np.array(Image.open(__import__("io").BytesIO(bytes(d.numpy()))))).permute(2, 0, 1)
                for d in datas]

    report, stats = [], {}
    out = decode_raws(raws, nvjpeg, report=report, stats=stats)
    assert [s.key for s in out] == ["a", "cmyk", "png", "refused", "b"]  # only the undecodable one is gone
    assert [s.label for s in out] == [0, 1, 2, 3, 5]
    assert stats == {"decode_fallbacks": 3}  # cmyk, png and refused decoded by PIL (broken by neither)
    assert [r.key for r in report] == ["broken"] and "cannot decode image" in report[0].reason
    assert calls == [3, 1, 1, 1]  # the batch, then image by image after it failed
    assert all(s.image.mode in ("RGB", "CMYK") for s in out)
    assert np.array_equal(np.array(out[0].image), np.array(Image.open(__import__("io").BytesIO(jpeg))))


def test_the_trainer_derives_the_mixed_views_precompute_labelled(tmp_path, dataset, ckpts, tasks):
    """The contract with pair mixing: the views a partition stores (partner, lambda, box of each
    row, pairs drawn per shard and view epoch) are those the trainer derives; other pairs are refused."""
    cfg = _mixed_stage(tmp_path, dataset, ckpts, "contract", feed_workers=1)
    spec = cfg.views.view_spec()
    assert spec.pairs
    t = replace(tasks(cfg)[0], device="cpu", limit=24)
    t = replace(t, path=paths.partition_path(cfg.labels.store, shard=t.shard, view_epoch=t.view_epoch,
                                             fingerprints=t.fingerprints))
    run_partition({"task": t})
    ref = ShardRef(t.shard, t.shard_path, 24)
    shard = load_shard(ref, spec=spec, seed=t.view_seed, view_epoch=t.view_epoch, label=LabelRef(t.path), num_classes=10)
    mixed = [v for v in shard.views if v.partner]
    assert mixed and all(shard.views[shard.index(v.partner)].partner == v.key for v in mixed)
    with pytest.raises(StoreError, match="view"):
        load_shard(ref, spec=replace(spec, mix_mode="elem"), seed=t.view_seed, view_epoch=t.view_epoch,
                   label=LabelRef(t.path), num_classes=10)
