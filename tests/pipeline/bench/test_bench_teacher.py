import json

from click.testing import CliRunner

from pipeline.cli import cli


def test_bench_teacher_json_rows():
    r = CliRunner().invoke(cli, ["bench", "teacher", "--model", "vit_tiny_patch16_224", "--keep", "196,98", "--batch", "2", "--repeats", "1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [row["keep"] for row in out["rows"]] == [196, 98]
    full, half = out["rows"]
    assert full["speedup"] == 1.0 and half["img_per_s"] > 0
    assert half["gmacs"] < 0.55 * full["gmacs"]


def test_bench_teacher_rejects_bad_keep():
    r = CliRunner().invoke(cli, ["bench", "teacher", "--model", "vit_tiny_patch16_224", "--keep", "300", "--batch", "1"])
    assert r.exit_code != 0


def test_bench_teacher_runs_a_forward_policy():
    r = CliRunner().invoke(cli, ["bench", "teacher", "--model", "vit_tiny_patch16_224", "--keep", "196,98", "--batch", "2",
                                 "--repeats", "1", "--policy", "lowres", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["policy"] == "lowres"
    full, half = out["rows"]
    assert 0.45 * full["gmacs"] < half["gmacs"] < 0.55 * full["gmacs"]  # a 10 x 10 grid: 100 tokens of 196


def test_bench_teacher_rejects_an_unknown_policy():
    r = CliRunner().invoke(cli, ["bench", "teacher", "--model", "vit_tiny_patch16_224", "--keep", "98", "--policy", "lowress"])
    assert r.exit_code != 0 and "--policy: unknown masking policy 'lowress'" in str(r.exception)
