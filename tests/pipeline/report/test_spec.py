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
    named |= {t.full for t in spec.targets} | {spec.kd_matters.baseline} | {c.full for c in spec.cheapest}
    named |= {r for c in spec.cheapest for r in c.rows}
    assert named <= labels, sorted(named - labels)
    assert set(spec.rows) <= labels and len(spec.rows) == 20 and spec.only_listed  # v4: v3's ft2 rows left out, the 8 restored rows in
    assert all(any(r.startswith(prefix) for r in spec.rows) for _, prefix in spec.kd_matters.teachers)
    # issue 28: per teacher, its five cheapened rows, each against the plain teacher's full-teacher KD
    full = "plain teacher: offline full-teacher KD"
    assert [c.full for c in spec.cheapest] == [full, full]
    for c, teacher in zip(spec.cheapest, ("plain teacher:", "ft1 teacher:")):
        assert len(c.rows) == 5 and all(r.startswith(teacher) and r in spec.rows for r in c.rows)
        assert all([r, full] in map(list, spec.pairs) for r in c.rows)
    assert not any(r.startswith("ft2") for r in named)


def test_the_archived_v3_spec_still_names_committed_rows():
    spec = load_spec(RESULTS / "results-v3.toml")
    assert set(spec.rows) <= _row_labels() and len(spec.rows) == 8 and spec.cheapest == ()
    assert spec.targets[0].rows == ("ft1 teacher: offline MaskedKD 50%", "ft2 teacher: offline MaskedKD 50%")


def test_a_cheapest_section_names_its_rows_by_prefix_or_by_list(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[[cheapest]]\nteacher = "t"\nrows = "t:"\nfull = "f"\n'
                    '[[cheapest]]\nteacher = "u"\nrows = ["u: a", "u: b"]\nfull = "f"\n')
    by_prefix, listed = load_spec(path).cheapest
    assert by_prefix.rows == "t:" and by_prefix.has("t: a") and not by_prefix.has("u: a")
    assert listed.rows == ("u: a", "u: b") and listed.has("u: b") and not listed.has("u: c") and not listed.has("f")


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
    ('[[cheapest]]\nteacher = "t"\nrows = "t:"\n', "cheapest[0]: missing full"),
])
def test_a_wrong_spec_names_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        load_spec(path)
    assert str(e.value).startswith(str(path)) and e.value.exit_code == 2
