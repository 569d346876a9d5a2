"""pipeline.precompute.plan: the precision a task runs at, and that it is part of the label fingerprint."""

from __future__ import annotations

from pipeline.config import load_config


def _tasks(stage, tasks, tmp_path, *sets):
    stage()  # writes s.yaml
    return tasks(load_config(tmp_path / "s.yaml", overrides=list(sets)))


def test_auto_precision_is_fp32_on_cpu_and_bf16_on_cuda(stage, tasks, tmp_path):
    auto_cpu = _tasks(stage, tasks, tmp_path)  # the test stage has compute.device: cpu
    assert {t.precision for t in auto_cpu} == {"fp32"}
    # an explicit fp32 is the same task: CPU stores written before `auto` existed stay valid
    fp32 = _tasks(stage, tasks, tmp_path, "compute.precision=fp32")
    assert [t.fingerprints for t in fp32] == [t.fingerprints for t in auto_cpu]
    # planning needs no GPU: compute.device cuda resolves auto to bf16
    auto_cuda = _tasks(stage, tasks, tmp_path, "compute.device=cuda")
    assert {t.precision for t in auto_cuda} == {"bf16"}


def test_a_precision_change_changes_the_label_fingerprint(stage, tasks, tmp_path):
    fp32 = _tasks(stage, tasks, tmp_path, "compute.precision=fp32")
    bf16 = _tasks(stage, tasks, tmp_path, "compute.precision=bf16")
    for a, b in zip(fp32, bf16):
        assert a.fingerprints["label"] != b.fingerprints["label"] and a.path != b.path
        assert {k: v for k, v in a.fingerprints.items() if k != "label"} == \
               {k: v for k, v in b.fingerprints.items() if k != "label"}
    assert _tasks(stage, tasks, tmp_path, "compute.device=cuda")[0].fingerprints == bf16[0].fingerprints
