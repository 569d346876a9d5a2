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


def test_bench_precompute_needs_two_shards():
    r = CliRunner().invoke(cli, ["bench", "precompute", "--samples", "64", "--shard-size", "64"])
    assert r.exit_code != 0 and "two shards" in str(r.exception or r.output)


def test_bench_precompute_on_cuda_needs_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    r = CliRunner().invoke(cli, ["bench", "precompute", "--samples", "96", "--shard-size", "48", "--device", "cuda"])
    assert r.exit_code != 0 and "--device cuda: torch sees no CUDA device" in str(r.exception or r.output)


def test_unmeasured_two_worker_numbers_print_as_a_dash():
    from pipeline.bench.precompute import _f

    assert _f(None, ".2f") == "-" and _f(1.234, ".2f") == "1.23"
