"""The tally's table: kinds counted as kinds, tries apart, each row naming its tests; filling
RELIABILITY.md leaves the prose around the markers alone."""

from __future__ import annotations

import pytest

from tests.reliability.render import BEGIN, END, into, rows, table

pytestmark = pytest.mark.reliability

CONFIG = "tests/reliability/test_configs.py::test_malformed_config_through_run"


def _tally() -> list[dict]:
    t = [{"area": "config", "fault": "malformed stage file through `run`", "outcome": "exit 2", "tried": 1, "ok": 1,
          "test": CONFIG} for _ in range(74)]
    t += [{"area": "store", "fault": "flipped byte", "outcome": o, "tried": 1, "ok": 1,
           "test": "tests/reliability/test_stores.py::test_damaged_partition_is_refused"}
          for o in ("`labels verify`: exit 1", "`run`: exit 4")]
    t.append({"area": "crash", "fault": "chain", "outcome": "2 chain(s)", "tried": 2, "ok": 2,
              "test": "tests/reliability/test_crash.py::test_kill_chain"})
    t.append({"area": "store", "fault": "missing partition", "outcome": "recomputed", "tried": 1, "ok": 1,
              "test": "tests/reliability/test_stores.py::test_missing_partition_is_named_then_recomputed"})
    return t


def test_a_kind_tried_many_times_is_one_row():
    rs = rows(_tally())
    assert [(r["area"], r["fault"], r["tried"]) for r in rs] == [  # an area's kinds together
        ("config", "malformed stage file through `run`", 74), ("store", "flipped byte", 2),
        ("store", "missing partition", 1), ("crash", "chain", 2)]
    assert rs[0]["tests"] == [CONFIG] and rs[1]["outcomes"] == ["`labels verify`: exit 1", "`run`: exit 4"]
    text = table(_tally())
    assert "| **all** | **4 kinds** in 3 areas | **79** | **79** | | |" in text
    assert f"`{CONFIG}`" in text


def test_into_replaces_only_the_marked_block():
    doc = f"# title\n\nprose before\n\n{BEGIN}\n| old | table |\n{END}\n\nprose after\n"
    out = into(doc, _tally())
    assert out.startswith("# title\n\nprose before\n\n" + BEGIN + "\n| area |")
    assert out.endswith(END + "\n\nprose after\n") and "| old | table |" not in out
    assert into(out, _tally()) == out  # rerunning gives the same file
    with pytest.raises(SystemExit, match="no <!-- tally:begin -->"):
        into("no markers", _tally())
