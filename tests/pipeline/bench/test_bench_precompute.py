import json

import pytest
from click.testing import CliRunner

from pipeline.cli import cli


@pytest.mark.slow
def test_bench_precompute_json_smoke():
    args = ["bench", "precompute", "--samples", "96", "--shard-size", "48", "--img-size", "28", "--batch", "32",
            "--perturb", "0.05", "--repeats", "1", "--json"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    for key in ("efficiency", "scaling_2w", "repeat_fraction", "changed_fraction", "teacher_forward_fraction"):
        assert key in out
    assert out["rows"] == 96 and out["shards"] == 2 and out["patches"] == 49 and out["keep"] == 25
    assert 0 < out["efficiency"] < 5 and 0 < out["scaling_2w"] < 5 and 0 < out["repeat_fraction"] < 1
    assert out["repeat_cached"] == 2 and out["repeat_teacher_forwards"] == out["repeat_student_forwards"] == 0
    assert 0 < out["changed_fraction"] == out["teacher_forward_fraction"] < 1
    assert out["changed_rows"] == out["changed_teacher_forwards"] == 96 - out["changed_rows_reused"]
    assert set(out["phase_seconds_1w"]) >= {"read", "render", "student", "teacher", "write"}
    m = out["macs"]  # the first run's labels: every row computed, one saliency forward each
    assert m["rows"] == 96 and m["spot_checks"] == 0 and m["net"] == m["teacher"] + m["saliency"] > m["teacher"] > 0
    assert m["net_ratio"] == m["net"] / m["full_teacher"] and m["teacher_ratio"] < m["net_ratio"] < 1


def test_bench_precompute_needs_two_shards():
    r = CliRunner().invoke(cli, ["bench", "precompute", "--samples", "64", "--shard-size", "64"])
    assert r.exit_code != 0 and "two shards" in str(r.exception or r.output)


def test_bench_precompute_feed_smoke():
    args = ["bench", "precompute", "--feed", "--feed-images", "6", "--feed-epochs", "2", "--batch", "4",
            "--repeats", "1", "--json"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert set(out["cases"]) == {"before", "after-w1", "after-host-w1", "after-w2", "after-host-w2", "after-torch-w1",
                                 "after-torch-host-w1", "after-torch-w2", "after-torch-host-w2"}
    assert {c["rows"] for c in out["cases"].values()} == {12}  # 6 images x 2 view epochs, every path
    for c in out["cases"].values():
        assert c["labels_per_cpu_s"] > 0 and set(c["cores_per_gpu"]) == {"DeiT-B", "DeiT-S"}
    assert out["cases"]["before"]["per_core_vs_before"] == 1.0


def test_bench_precompute_feed_with_rand_augment_and_one_resizer():
    args = ["bench", "precompute", "--feed", "--feed-images", "4", "--feed-epochs", "1", "--batch", "4",
            "--repeats", "1", "--feed-resize", "torch", "--feed-auto-augment", "rand-m9-mstd0.5-inc1"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "RandAugment rand-m9-mstd0.5-inc1" in r.output and "| after-torch-host-w2 |" in r.output
    assert "| after-w1 |" not in r.output
    bad = CliRunner().invoke(cli, ["bench", "precompute", "--feed", "--feed-resize", "opencv"])
    assert bad.exit_code != 0 and "--feed-resize: opencv is not pil or torch" in str(bad.exception or bad.output)
    bad = CliRunner().invoke(cli, ["bench", "precompute", "--feed", "--feed-auto-augment", "nope"])
    assert bad.exit_code != 0 and "--feed-auto-augment" in str(bad.exception or bad.output)


@pytest.mark.slow
def test_bench_precompute_hash_cost_smoke():
    from pipeline.bench.hashing import hash_cost_table, precompute_hash_cost

    cost = precompute_hash_cost(samples=96, shard_size=48, batch=32, img_size=28, keep=None, repeats=1)
    assert [len(v) for v in cost["seconds"].values()] == [len(v) for v in cost["cpu_seconds"].values()] == [1, 1]
    assert cost["ratio_on_off_cpu"] > 0
    assert cost["ratio_on_off"] > 0 and cost["unit"] == "labels" and cost["per_s_on"] > 0
    assert cost["sha256_s"] > 0 and cost["shard_bytes"] > 0
    assert "| first run | " in hash_cost_table(cost, "first run")


def test_bench_precompute_on_cuda_needs_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    r = CliRunner().invoke(cli, ["bench", "precompute", "--samples", "96", "--shard-size", "48", "--device", "cuda"])
    assert r.exit_code != 0 and "--device cuda: torch sees no CUDA device" in str(r.exception or r.output)


def test_unmeasured_two_worker_numbers_print_as_a_dash():
    from pipeline.bench.precompute import dash_or

    assert dash_or(None, ".2f") == "-" and dash_or(1.234, ".2f") == "1.23"


def test_label_macs_count_the_saliency_pass_beside_the_teacher(tmp_path):
    from pipeline.bench.precompute import label_macs, macs_line
    from pipeline.precompute.costs import full_teacher_macs_per_view, saliency_macs_per_view
    from tests.pipeline.run.test_graph import config

    cfg = config(tmp_path)
    sal, full = saliency_macs_per_view(cfg), full_teacher_macs_per_view(cfg)
    m = label_macs(cfg, {"rows": 10, "student_forwards": 10, "teacher_macs": 10 * full // 2})
    assert m == {"teacher": 10 * full // 2, "saliency": 10 * sal, "spot_checks": 0, "net": 10 * full // 2 + 10 * sal,
                 "full_teacher": 10 * full, "rows": 10, "teacher_ratio": (10 * full // 2) / (10 * full),
                 "net_ratio": (10 * full // 2 + 10 * sal) / (10 * full)}
    row = macs_line(m)
    assert f"net {m['net_ratio']:.3f}x full-teacher KD" in row and f"teacher-only {m['teacher_ratio']:.3f}x" in row
