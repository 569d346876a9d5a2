"""``mkd-pipeline bench saliency``: the saliency pass counted by maskedkd's FLOP counter, and the
capacity plan of stages/imagenet.yaml quoting what it prints."""

import json
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import cli

STAGES = Path(__file__).resolve().parents[3] / "stages"


def test_bench_saliency_counts_the_pass_and_the_net_ratio_of_each_keep():
    import timm
    import torch

    from maskedkd import saliency_macs, teacher_macs

    r = CliRunner().invoke(cli, ["bench", "saliency", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = {(x["student"], x["scale"]): x for x in json.loads(r.output)["rows"]}
    assert set(rows) == {(s, k) for s in ("deit_small_patch16_224", "deit_tiny_patch16_224") for k in (1.0, 0.5)}
    with torch.device("meta"):
        small, base = timm.create_model("deit_small_patch16_224"), timm.create_model("deit_base_patch16_224")
    s1, s2 = rows["deit_small_patch16_224", 1.0], rows["deit_small_patch16_224", 0.5]
    assert s1["saliency_macs"] == saliency_macs(small) < s1["student_forward_macs"] == teacher_macs(small, None)
    assert s2["saliency_macs"] == saliency_macs(small, 0.5) and s2["saliency_size"] == [112, 112]
    assert [k["keep"] for k in s1["keeps"]] == [98, 49]
    full = teacher_macs(base, None)
    assert s1["keeps"][0]["net_ratio"] == (teacher_macs(base, 98) + saliency_macs(small)) / full
    assert s2["keeps"][0]["net_ratio"] < s1["keeps"][0]["net_ratio"]
    # the capacity plan quotes these figures
    plan = (STAGES / "imagenet.yaml").read_text()
    for student in ("deit_small_patch16_224", "deit_tiny_patch16_224"):
        for scale in (1.0, 0.5):
            assert f"{rows[student, scale]['keeps'][0]['net_ratio']:.3f}x" in plan, (student, scale)
    assert "mkd-pipeline bench saliency" in plan


def test_bench_saliency_reads_a_stage_files_models_and_refuses_a_bad_scale():
    r = CliRunner().invoke(cli, ["bench", "saliency", "--stages", str(STAGES / "results" / "plain-mkd50-s0.yaml"),
                                 "--keep", "25", "--scale", "1,0.5"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "| results-plain-mkd50-s0: student -> teacher | 0.5 (16x16 px) |" in r.output and "25/49: " in r.output
    bad = CliRunner().invoke(cli, ["bench", "saliency", "--scale", "2"])
    assert bad.exit_code != 0 and "each scale must be in (0, 1]" in bad.output
