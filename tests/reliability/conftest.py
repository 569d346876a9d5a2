"""Shared state of the reliability suite: one tiny real dataset, one uninterrupted baseline run
per config (A = ``tiny``, then B = ``tiny-b``, same teacher and masks, another ``train.lr``), and
a tally of every fault tried, printed as a table at the end of the session (RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.pipeline.config.cases import ws  # noqa: F401  (the fixture, for test_configs and test_gc)
from tests.pipeline.data.helpers import real_fashion_mnist_subset
from tests.reliability.helpers import hashes, stage, timed_run

TALLY: list[dict] = []


def pytest_terminal_summary(terminalreporter):
    if not TALLY:
        return
    from tests.reliability.render import table

    terminalreporter.write_sep("-", "reliability tally (RELIABILITY.md: python -m tests.reliability.render)")
    terminalreporter.write(table(TALLY))
    out = os.environ.get("MKD_RELIABILITY_TALLY")
    if out:
        Path(out).write_text(json.dumps(TALLY, indent=1))


@pytest.fixture
def tally(request):
    """tally(area, fault, outcome, tried=1, ok=1): count one fault tried and what happened.

    ``fault`` names a kind: try it as often as you like under the same name (the table counts
    kinds and tries apart). The entry records the test that tried it (``file::function``).
    """
    test = request.node.nodeid.split("[", 1)[0]

    def add(area: str, fault: str, outcome: str, tried: int = 1, ok: int = 1) -> None:
        TALLY.append({"area": area, "fault": fault, "outcome": outcome, "tried": tried, "ok": ok, "test": test})

    return add


def snapshot(work: Path, names: tuple[str, ...]) -> dict[str, str]:
    """sha256 of every store file (the teacher's timing sidecar aside) and of the runs' checkpoints."""
    out = {f"store/{k}": v for k, v in hashes(work / "store").items() if not k.startswith("teachers/") or k.endswith(".pth")}
    for n in names:
        out.update({f"runs/{n}/checkpoints/{k}": v for k, v in hashes(work / "runs" / n / "checkpoints").items()})
    return out


@dataclass
class Baseline:
    """The work folder (absolute paths are part of partition metadata, so every scenario reruns
    here) and what uninterrupted sequential runs left in it."""

    work: Path
    a: dict[str, str] = field(default_factory=dict)  # after A alone
    ab: dict[str, str] = field(default_factory=dict)  # after A then B
    logs: dict[str, str] = field(default_factory=dict)
    spans: dict[str, float] = field(default_factory=dict)  # seconds each stage of A took

    def clear(self) -> None:
        for d in ("store", "runs"):
            shutil.rmtree(self.work / d, ignore_errors=True)

    def restore(self, which: str) -> None:
        """Put the store and run folders back as the baseline left them after ``a`` or ``ab``."""
        self.clear()
        for d in ("store", "runs"):
            shutil.copytree(self.work / f".snap-{which}" / d, self.work / d)


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Baseline:
    work = tmp_path_factory.mktemp("work")
    real_fashion_mnist_subset(work / "data", 200, 32, 100)
    stage(work / "a.yaml", name="tiny")
    stage(work / "b.yaml", name="tiny-b", train__lr=1.0e-3)
    b = Baseline(work)
    for which, cfg, names in (("a", "a.yaml", ("tiny",)), ("ab", "b.yaml", ("tiny", "tiny-b"))):
        code, text, spans = timed_run("run", cfg, cwd=work, log=work / f"baseline-{which}.log")
        assert code == 0, text
        b.logs[which] = text
        b.spans = b.spans or spans
        setattr(b, which, snapshot(work, names))
        for d in ("store", "runs"):
            shutil.copytree(work / d, work / f".snap-{which}" / d)
    return b
