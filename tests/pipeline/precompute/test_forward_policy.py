"""Labels of a forward policy (issue 28: ``lowres``): no keep set stored, rows reused only by the
same policy at the same keep, no student read; the spot-check measures it at net MACs and
``policy: auto`` chooses among policies with its reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from maskedkd import FORWARD_POLICIES, Budget, Rung, policy_choice, teacher_forward, teacher_macs
from maskedkd.rendering import render_batch
from maskedkd.views import ViewSpec, shard_views
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.data.shards import read_shard
from pipeline.labels.contract import reused_mask
from pipeline.models import create_model
from pipeline.precompute.probe import plan_probe, probe_policies, run_probe
from pipeline.precompute.spec import model_spec
from pipeline.precompute.task import run_partition
from pipeline.run.stages import auto_choice
from tests.pipeline.precompute.conftest import stage_doc
from tests.pipeline.precompute.helpers import VIT, read


def _label(stage, tasks, name: str, **kw) -> tuple[object, dict]:
    """The first shard's partition of a stage ``name`` (policy/keep/tolerance in ``kw``), computed here."""
    t = tasks(stage(name, **kw))[0]
    return t, run_partition({"task": t})


def test_lowres_stores_no_keep_set_and_the_teachers_real_logits(stage, tasks, ckpts):
    t, res = _label(stage, tasks, "lowres", policy="lowres", keep=16)
    assert t.student is None and res["student_forwards"] == 0  # no saliency pass
    teacher = create_model(VIT, t.teacher.kwargs, weights=ckpts["teacher"]).eval()
    assert res["teacher_macs"] == res["rows"] * teacher_macs(teacher, 16, "lowres") < res["rows"] * teacher_macs(teacher, None)
    got = read([t])
    assert not got["keep"].any()  # an empty keep set: the teacher saw the whole view, at 16 x 16 px
    samples = list(read_shard(t.shard_path))
    views = shard_views(ViewSpec.from_dict(t.view_spec), t.view_seed, t.view_epoch, [s.key for s in samples])
    r = t.teacher.render
    images = render_batch([s.image for s in samples], views, r.size, mean=r.mean, std=r.std,
                          interpolation=r.interpolation, resize=r.resize)
    with torch.no_grad():
        want = F.log_softmax(teacher_forward(teacher, images, "lowres", 16), 1)
    top = got["logp"].argmax(1)
    assert torch.equal(top, want.argmax(1))
    assert torch.allclose(got["logp"].gather(1, top[:, None]), want.gather(1, top[:, None]), atol=2e-3)


def test_rows_are_reused_only_by_the_same_policy_at_the_same_keep(stage, tasks):
    _, first = _label(stage, tasks, "a", policy="lowres", keep=16)
    assert first["rows_computed"] == first["rows"] > 0
    # the same policy and keep, another mask fingerprint (tolerance): every row reused
    _, same = _label(stage, tasks, "b", policy="lowres", keep=16, tolerance=3)
    assert same["rows_reused"] == same["rows"] and same["teacher_forwards"] == 0
    # another keep of lowres, and keep-set policies even at the widest tolerance: nothing reused
    _, other_keep = _label(stage, tasks, "c", policy="lowres", keep=25)
    assert other_keep["rows_reused"] == 0
    _, student = _label(stage, tasks, "d", policy="student", keep=16, tolerance=49)  # 49: any keep set would do
    assert student["rows_reused"] == 0  # but only lowres rows are there
    # and a later lowres task does not take the keep-set rows either
    _, again = _label(stage, tasks, "f", policy="lowres", keep=9)
    assert again["rows_reused"] == 0


def test_the_reuse_rule():
    assert reused_mask("student", 25) is None and reused_mask("random", 25) is None
    assert reused_mask("lowres", None) is None  # all patches: the plain teacher, a keep set like any other
    assert reused_mask("lowres", 25) == ("lowres", 25)
    assert reused_mask("a_policy_registered_elsewhere", 25) == ("a_policy_registered_elsewhere", 25)


def _auto_cfg(tmp_path, dataset, ckpts, policies=None):
    doc = stage_doc(name="auto", data_root=dataset, store=tmp_path / "store", teacher_weights=ckpts["teacher"],
                    run_dir=tmp_path / "run")
    doc["masking"] = {"policy": "auto", "keep": "auto", "budget": {"agreement": 0.0}, "ladder": [0.25, 0.5, 1.0],
                      **({"policies": policies} if policies else {})}
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def test_the_spot_check_measures_lowres_at_net_macs_and_auto_picks_among_policies(tmp_path, dataset, ckpts):
    assert _auto_cfg(tmp_path, dataset, ckpts).masking.candidates() == ("student", "random", *sorted(FORWARD_POLICIES))
    assert "lowres" in probe_policies()
    cfg = _auto_cfg(tmp_path, dataset, ckpts, ["student", "random", "lowres"])
    manifest = load_manifest(cfg.data.root)
    teacher, student = model_spec(cfg, "teacher", ckpts["teacher"]), model_spec(cfg, "student", ckpts["c0"])
    task = plan_probe(cfg, 0, manifest=manifest, teacher=teacher, student=student, keeps=[12, 25, None],
                      policies=cfg.masking.candidates(), samples=16, device="cpu")
    probe = run_probe({"task": task})
    model = create_model(VIT, cfg.teacher.kwargs, weights=ckpts["teacher"])
    lowres = [Rung(**r) for r in probe["curves"]["lowres"]]
    assert [r.macs for r in lowres] == [teacher_macs(model, 12, "lowres"), teacher_macs(model, 25, "lowres"),
                                        teacher_macs(model, None)]
    assert all(r.saliency_macs == 0 for r in lowres)
    assert all(Rung(**r).saliency_macs > 0 for r in probe["curves"]["student"][:2])
    # agreement >= 0 admits every keep: the cheapest net is lowres at 12 (a 3 x 3 grid: 9 tokens, no saliency pass)
    policy, keep, why = auto_choice(cfg, probe)
    assert (policy, keep) == ("lowres", 12)
    assert why.startswith("lowres keep 12 0.") and "the others: random keep 12" in why and "student keep 12" in why
    curves = {p: [Rung(**r) for r in probe["curves"][p]] for p in cfg.masking.candidates()}
    assert (policy, keep, why) == policy_choice(curves, Budget(agreement=0.0))


@pytest.mark.parametrize(("policies", "reads"), [(["random", "lowres"], False), (["lowres", "student"], True)])
def test_auto_reads_the_student_only_when_a_candidate_does(tmp_path, dataset, ckpts, policies, reads):
    cfg = _auto_cfg(tmp_path, dataset, ckpts, policies)
    assert cfg.masking.candidates() == tuple(policies) and cfg.masking.reads_saliency is reads
