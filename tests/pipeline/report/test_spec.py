"""Results specs (pipeline/report/spec.py) and the committed one of RESULTS.md (stages/results/results.toml)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.report.spec import ResultsSpec, load_spec

RESULTS = Path(__file__).resolve().parents[3] / "stages" / "results"


def _row_labels() -> set[str]:
    labels = set()
    for path in RESULTS.glob("*.yaml"):
        m = re.search(r"^#\s*Row:\s*(.+?)\s*$", path.read_text(), re.M)
        if m:
            labels.add(m.group(1))
    return labels


def test_the_committed_spec_names_only_rows_of_the_committed_configs():
    spec = load_spec(RESULTS / "results.toml")
    labels = _row_labels()
    named = set(spec.rows) | {r for pair in spec.pairs for r in pair} | {r for t in spec.targets for r in t.rows}
    named |= {t.full for t in spec.targets} | {spec.kd_matters.baseline}
    assert named <= labels, sorted(named - labels)
    assert set(spec.rows) <= labels and len(spec.rows) == 8 and spec.only_listed  # v3: v2's other rows left out
    assert all(any(r.startswith(prefix) for r in spec.rows) for _, prefix in spec.kd_matters.teachers)
    assert [t.max_ratio for t in spec.targets] == [None, 0.55]
    # issue 24: either fine-tune's MaskedKD 50% against the plain teacher's full-teacher KD
    assert spec.targets[0].rows == ("ft1 teacher: offline MaskedKD 50%", "ft2 teacher: offline MaskedKD 50%")
    assert spec.targets[0].full == "plain teacher: offline full-teacher KD"


def test_a_target_names_one_row_or_several_and_may_leave_out_the_cost_bound(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[[targets]]\nrow = "a"\nfull = "f"\nmax_ratio = 0.5\nwhat = "w"\n'
                    '[[targets]]\nrow = ["a", "b"]\nfull = "f"\nwhat = "w"\n')
    one, several = load_spec(path).targets
    assert (one.rows, one.max_ratio) == (("a",), 0.5) and (several.rows, several.max_ratio) == (("a", "b"), None)


def test_only_listed_leaves_the_other_rows_out(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text('rows = ["b", "a"]\nonly_listed = true\n')
    spec = load_spec(path)
    assert spec.only_listed and spec.shows("a") and not spec.shows("c")
    assert ResultsSpec(rows=("b",)).shows("c")  # by default every row is shown


def test_rows_follow_the_spec_then_the_alphabet():
    spec = ResultsSpec(rows=("b", "a"))
    assert sorted(["z", "a", "c", "b"], key=spec.row_key) == ["b", "a", "c", "z"]
    assert sorted(["z", "a"], key=ResultsSpec().row_key) == ["a", "z"]


def test_a_partial_probe_table_keeps_the_default_words(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('title = "T"\n[probe]\ntitle = "P"\n')
    spec = load_spec(path)
    assert spec.title == "T" and spec.probe["title"] == "P" and spec.probe["missing"] == ResultsSpec().probe["missing"]
    assert spec.rows == () and spec.pairs == () and spec.targets == () and spec.kd_matters is None


@pytest.mark.parametrize("text, message", [
    ('titel = "x"\n', "unknown key(s) titel"),
    ('[[targets]]\nrow = "a"\nwhat = "w"\n', "targets[0]: missing full"),
    ('[[targets]]\nrow = []\nfull = "b"\nwhat = "w"\n', "targets[0]: row is a row or a non-empty list of rows"),
    ('pairs = [["a", "b", "c"]]\n', "pairs: each pair is [row, other row]"),
    ('[kd_matters]\nbaseline = "CE"\nteachers = [{label = "t"}]\n', "kd_matters.teachers[0]: missing rows"),
    ("rows = [\n", "cannot read the results spec"),
])
def test_a_wrong_spec_names_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        load_spec(path)
    assert str(e.value).startswith(str(path)) and e.value.exit_code == 2
