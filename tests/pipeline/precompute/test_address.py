"""Which scheduler precompute connects to: --scheduler / --scheduler-file, compute.scheduler,
$DASK_SCHEDULER_ADDRESS (issue 15, item 6). No cluster needed."""

from __future__ import annotations

import json

import dask
import pytest

from pipeline.cli import main
from pipeline.errors import ComputeError
from pipeline.precompute.address import DASK_ENV, read_scheduler_file, resolve_address


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(DASK_ENV, raising=False)
    monkeypatch.delenv("MKD_SCHEDULER", raising=False)


def test_flag_beats_config_beats_dask_default(monkeypatch):
    monkeypatch.setenv(DASK_ENV, "tcp://env:8786")
    assert resolve_address("tcp://flag:8786", "tcp://cfg:8786") == "tcp://flag:8786"
    assert resolve_address(None, "tcp://cfg:8786") == "tcp://cfg:8786"
    assert resolve_address(None, None) == "tcp://env:8786"
    monkeypatch.delenv(DASK_ENV)
    assert resolve_address(None, None) is None


def test_dask_config_key_is_the_default_too():
    with dask.config.set({"scheduler-address": "tcp://from-config:8786"}):
        assert resolve_address(None, None) == "tcp://from-config:8786"


def test_scheduler_file_gives_its_address(tmp_path):
    f = tmp_path / "scheduler.json"
    f.write_text(json.dumps({"type": "Scheduler", "address": "tcp://10.0.0.1:8786", "services": {}}))
    assert read_scheduler_file(f) == "tcp://10.0.0.1:8786"


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"type": "Scheduler"})])
def test_bad_scheduler_file_is_named(tmp_path, content):
    f = tmp_path / "scheduler.json"
    if content is not None:
        f.write_text(content)
    with pytest.raises(ComputeError) as err:
        read_scheduler_file(f)
    assert str(f) in str(err.value) and err.value.exit_code == 5


@pytest.mark.parametrize("command", [["run"], ["precompute", "--segment", "0"], ["probe"]])
def test_cli_missing_scheduler_file_exits_5_naming_it(tmp_path, capsys, command):
    missing = tmp_path / "nope.json"
    with pytest.raises(SystemExit) as e:
        main([command[0], str(tmp_path / "s.yaml"), *command[1:], "--scheduler-file", str(missing)])
    assert e.value.code == 5
    assert f"scheduler file {missing} does not exist" in capsys.readouterr().err


def test_cli_scheduler_and_scheduler_file_together_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", str(tmp_path / "s.yaml"), "--scheduler", "tcp://a:1", "--scheduler-file", str(tmp_path / "f")])
    assert e.value.code == 2
    assert "not both" in capsys.readouterr().err
