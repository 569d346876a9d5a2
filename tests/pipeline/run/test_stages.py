"""What the ``precompute-i`` stage of ``keep: auto`` takes from its spot-check, and why (issue 24 item 4)."""

from __future__ import annotations

from pipeline.run.stages import auto_keep, chosen_keep
from tests.pipeline.run.test_graph import config


def _rung(keep, macs, sal, agreement=1.0):
    return {"keep": keep, "top1": 0.5, "agreement": agreement, "kl": 0.0, "macs": macs, "saliency_macs": sal}


def test_auto_keep_gives_the_full_teacher_and_says_so_when_the_saliency_pass_eats_the_saving(tmp_path):
    cfg = config(tmp_path, masking__keep="auto", masking__budget={"agreement": 0.9})
    dear = {"curves": {"student": [_rung(4, 30, 80), _rung(8, 60, 80), _rung(None, 100, 0)]}}
    keep, why = auto_keep(cfg, dear)
    assert keep is None and chosen_keep(cfg, dear) is None
    assert why.startswith("keep 4 is within the budget (agreement >= 0.9) but costs 1.10x the full teacher's MACs")
    cheap = {"curves": {"student": [_rung(4, 30, 20, agreement=0.5), _rung(8, 60, 20), _rung(None, 100, 0)]}}
    assert auto_keep(cfg, cheap) == (8, "the smallest keep within the budget (agreement >= 0.9), net 0.80x the full "
                                        "teacher's MACs")
