"""Render the reliability suite's tally (what ``MKD_RELIABILITY_TALLY=FILE`` writes) as the table
of RELIABILITY.md, and write it between that file's ``<!-- tally:begin -->`` and
``<!-- tally:end -->`` markers; the prose around them is left as it is.

One row per *kind* of fault or bad input (area + fault): a kind tried many times (74 malformed
configs, 6 kill moments in one stage) is one kind with that many tries. Each row names the
test(s) that tried it.

    python -m tests.reliability.render TALLY.json [--into RELIABILITY.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BEGIN, END = "<!-- tally:begin -->", "<!-- tally:end -->"


def rows(tally: list[dict]) -> list[dict]:
    """The tally's entries merged by kind (area, fault): areas in the order first tried, kinds
    within an area likewise."""
    out: dict[tuple[str, str], dict] = {}
    for t in tally:
        r = out.setdefault((t["area"], t["fault"]), {"area": t["area"], "fault": t["fault"], "tried": 0, "ok": 0,
                                                     "outcomes": [], "tests": []})
        r["tried"] += t["tried"]
        r["ok"] += t["ok"]
        for k, v in (("outcomes", t["outcome"]), ("tests", t.get("test", "?"))):
            if v not in r[k]:
                r[k].append(v)
    areas = list(dict.fromkeys(area for area, _ in out))
    return sorted(out.values(), key=lambda r: areas.index(r["area"]))  # stable: first-tried order within an area


def table(tally: list[dict]) -> str:
    """The markdown table: one row per kind, then the totals (kinds, areas, tries, as expected)."""
    rs = rows(tally)
    lines = ["| area | kind of fault / bad input | tries | as expected | what happened | test |",
             "|---|---|---|---|---|---|"]
    for r in rs:
        tests = "<br>".join(f"`{t}`" for t in r["tests"])
        lines.append(f"| {r['area']} | {r['fault']} | {r['tried']} | {r['ok']} | {'; '.join(r['outcomes'])} | {tests} |")
    areas = len({r["area"] for r in rs})
    tried, ok = sum(r["tried"] for r in rs), sum(r["ok"] for r in rs)
    lines.append(f"| **all** | **{len(rs)} kinds** in {areas} areas | **{tried}** | **{ok}** | | |")
    return "\n".join(lines) + "\n"


def into(doc: str, tally: list[dict]) -> str:
    """``doc`` with the text between the markers replaced by the table."""
    head, sep, rest = doc.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"the document has no {BEGIN} ... {END} block to fill")
    return f"{head}{BEGIN}\n{table(tally)}{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tally", type=Path, help="the JSON file MKD_RELIABILITY_TALLY named")
    ap.add_argument("--into", type=Path, help="the markdown file to fill (RELIABILITY.md); else print the table")
    a = ap.parse_args(argv)
    tally = json.loads(a.tally.read_text())
    if a.into:
        a.into.write_text(into(a.into.read_text(), tally))
    else:
        print(table(tally), end="")


if __name__ == "__main__":
    main()
