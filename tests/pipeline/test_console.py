"""Progress bars and logs (issue 15, item 7): bars only on a terminal and without -q; -v turns on
the pipeline's debug logs; `data import` shows a bar per split."""

from __future__ import annotations

import io
import json
import sys

import pytest

from pipeline._console import bars_enabled, configure, progress_bar
from pipeline.cli import main
from tests.pipeline.data.helpers import make_fake_fashion_mnist


class FakeTTY(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def default_console():
    configure()
    yield
    configure()  # -v in a test must not leave debug logging on for the next


@pytest.fixture
def tty(monkeypatch):
    """tty() -> a FakeTTY installed as sys.stderr. Call it in the test body: pytest's capture puts
    its own sys.stderr back at the start of each phase, so one set in a fixture would not last."""

    def install() -> FakeTTY:
        stream = FakeTTY()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return install


def _draw(n: int = 3) -> None:
    with progress_bar(total=n, desc="bar", unit="it") as bar:
        for _ in range(n):
            bar.update(1)


def test_bars_show_on_a_terminal_only(tty, monkeypatch):
    tty = tty()
    assert bars_enabled()
    _draw()
    assert "bar: 100%" in tty.getvalue() and "3/3" in tty.getvalue()
    plain = io.StringIO()  # redirected to a file or a pipe
    monkeypatch.setattr(sys, "stderr", plain)
    assert not bars_enabled()
    _draw()
    assert plain.getvalue() == ""


def test_quiet_turns_bars_off_even_on_a_terminal(tty):
    tty = tty()
    configure(quiet=True)
    assert not bars_enabled()
    _draw()
    assert tty.getvalue() == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_data_import_shows_a_bar_per_split_unless_quiet(tmp_path, tty, quiet):
    make_fake_fashion_mnist(tmp_path / "src", n_train=30, n_test=12)
    args = ["data", "import", "fashion-mnist", "--out", str(tmp_path / "out"), "--src", str(tmp_path / "src")]
    tty = tty()
    with pytest.raises(SystemExit) as e:
        main(["-q", *args] if quiet else args)
    assert e.value.code == 0
    err = tty.getvalue()
    if quiet:
        assert err == ""
    else:
        assert "train: 100%" in err and "30/30" in err and "test: 100%" in err and "12/12" in err


def test_verbose_turns_on_debug_logs(tmp_path, capsys):
    f = tmp_path / "scheduler.json"
    f.write_text(json.dumps({"address": "tcp://127.0.0.1:1"}))
    args = ["precompute", str(tmp_path / "missing.yaml"), "--segment", "0", "--scheduler-file", str(f)]
    with pytest.raises(SystemExit):
        main(args)  # the scheduler file is read, then the missing stage file fails
    assert "DEBUG" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-v", *args])
    assert f"DEBUG pipeline.precompute.address: scheduler file {f}: address tcp://127.0.0.1:1" in capsys.readouterr().err
