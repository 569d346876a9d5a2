"""A precompute stage's net cost fields (pipeline/precompute/costs.py): saliency forwards counted
with maskedkd's FLOP counter on the config's student, spot-checks beside teacher_macs, net and
full-teacher MACs."""

from __future__ import annotations

from maskedkd import saliency_macs, teacher_macs
from pipeline.models import create_model
from pipeline.precompute.costs import (
    full_teacher_macs_per_view,
    net_cost_fields,
    recorded_reuse_check_macs,
    saliency_macs_per_view,
)
from tests.pipeline.run.test_graph import config


def test_meta_device_counts_equal_the_flop_counter_on_real_models(tmp_path):
    cfg = config(tmp_path)
    student = create_model(cfg.student.model, cfg.student.kwargs, seed=0).eval()
    teacher = create_model(cfg.teacher.model, cfg.teacher.kwargs, seed=0).eval()
    assert saliency_macs_per_view(cfg) == saliency_macs(student) > 0
    assert full_teacher_macs_per_view(cfg) == teacher_macs(teacher, None) > saliency_macs(student)


def test_summary_fields_add_saliency_and_keep_teacher_macs_meaning(tmp_path):
    cfg = config(tmp_path)
    sal, full = saliency_macs_per_view(cfg), full_teacher_macs_per_view(cfg)
    # 100 rows labelled at some keep, 80 of them computed (so 80 saliency forwards), spot-check of 500 MACs
    summary = {"rows": 100, "student_forwards": 80, "teacher_macs": 80 * 1000 + 500}
    fields = net_cost_fields(cfg, summary, 500)
    assert fields == {"saliency_macs": 80 * sal, "spot_check_macs": 500, "net_macs": 80 * 1000 + 500 + 80 * sal,
                      "full_teacher_macs": 100 * full}
    # a fixed keep: no spot-check field; the full teacher (no student forward): no saliency
    fixed = net_cost_fields(cfg, {"rows": 10, "student_forwards": 0, "teacher_macs": 10 * full}, None)
    assert "spot_check_macs" not in fixed and fixed["saliency_macs"] == 0 and fixed["net_macs"] == fixed["full_teacher_macs"]


def test_the_saliency_pass_is_counted_at_the_configured_scale(tmp_path):
    cfg = config(tmp_path)
    half = config(tmp_path, masking__saliency_scale=0.5)
    student = create_model(cfg.student.model, cfg.student.kwargs, seed=0).eval()
    assert saliency_macs_per_view(half) == saliency_macs(student, 0.5) < saliency_macs_per_view(cfg)


def test_reuse_check_macs_are_in_net_and_old_locks_read(tmp_path):
    cfg = config(tmp_path)
    sal = saliency_macs_per_view(cfg)
    summary = {"rows": 100, "student_forwards": 100, "teacher_macs": 80 * 1000, "reuse_check_macs": 16 * 1000}
    assert net_cost_fields(cfg, summary, None)["net_macs"] == 80 * 1000 + 100 * sal + 16 * 1000
    assert recorded_reuse_check_macs(summary) == 16 * 1000
    # a lock from before the field: nothing spot-checked under tolerance is exactly 0, else unknown
    assert recorded_reuse_check_macs({"rows": 100, "spot_check_rows": 0}) == recorded_reuse_check_macs({}) == 0
    assert recorded_reuse_check_macs({"rows": 100, "spot_check_rows": 16}) is None
