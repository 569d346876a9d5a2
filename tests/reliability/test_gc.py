"""``gc --yes`` after a kill: temp files of interrupted atomic writes are removed from the run
folder too (checkpoints, resume records, run lock, report plots), not only from the store.
Found by the kill -9 chain (a kill while the report's plots were written left one behind)."""

from __future__ import annotations

import pytest

from tests.pipeline.config.cases import BASE, write_doc
from tests.reliability.helpers import main_in_process

pytestmark = pytest.mark.reliability


def test_gc_removes_temp_files_in_run_folder_and_store(ws, tally):
    cfg = write_doc(ws, BASE)
    leftovers = [ws / "runs/t/.tmp-student_accuracy.png.k2j4", ws / "runs/t/checkpoints/.tmp-c1.pth.x8",
                 ws / "runs/t/train/.tmp-resume.json.q1", ws / "store/ab12/train-000000/.tmp-e0000-v1.parquet.z"]
    keep = [ws / "runs/t/checkpoints/c0.pth", ws / "runs/t/train/resume.json"]
    for p in leftovers + keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    code, out = main_in_process("gc", str(cfg), "--grace", "0", cwd=ws)
    assert code == 0 and all(str(p.relative_to(ws)) in out for p in leftovers), out  # dry run lists them
    assert all(p.exists() for p in leftovers)
    code, out = main_in_process("gc", str(cfg), "--yes", "--grace", "0", cwd=ws)
    assert code == 0, out
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in keep)
    tally("crash", "temp files left by kills in the run folder", "`gc --yes` removes them (store and run folder)")
