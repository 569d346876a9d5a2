"""Committed per-run records: what :func:`pipeline.report.collect.collect_run` read of one finished
run (its :class:`RunOutcome`, load averages and spot-check curves included), as a small JSON file
``<records>/<config stem>.json``, so a results page can be regenerated after the run folders are
gone (``mkd-pipeline report --record-to DIR`` writes them; the report reads them where a config has
no finished run).

A record names the config it was made from and a digest of the config's settings (its YAML
without the comments): a record of a config edited since is refused, like a malformed one, with a
message naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline._atomic import write_atomic
from pipeline.errors import ConfigError
from pipeline.report.collect import RunOutcome, collect_run, run_lock_path

__all__ = ["RECORD_VERSION", "config_digest", "read_outcome", "read_record", "record_path", "write_record"]

RECORD_VERSION = 1
_NOT_STORED = {"record"}  # where this outcome was read from: set on reading, never written
_HINTS = typing.get_type_hints(RunOutcome)
_FIELDS = {f.name: f for f in dataclasses.fields(RunOutcome) if f.name not in _NOT_STORED}
_REQUIRED = {n for n, f in _FIELDS.items()
             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def read_outcome(config: str | Path, logs: Path | None = None, records: str | Path | None = None) -> RunOutcome:
    """What the results page shows of ``config``: its run folder's outcome when that run finished,
    else its committed record when there is one, else the unfinished (or never run) outcome.

    Args:
        logs: folder of the run logs (see :func:`collect_run`).
        records: folder of the records [default: ``records/`` beside the config].
    """
    rec = record_path(Path(config).parent / "records" if records is None else records, config)
    if run_lock_path(config).is_file() or not rec.is_file():
        r = collect_run(config, logs)
        if r.finished or r.teacher_train is not None or not rec.is_file():
            return r
    return read_record(rec, config)


def record_path(folder: str | Path, config: str | Path) -> Path:
    """Where the record of ``config`` lives in ``folder``: ``<folder>/<config stem>.json``."""
    return Path(folder) / f"{Path(config).stem}.json"


def config_digest(config: str | Path) -> str:
    """sha256 of the config's settings (parsed YAML, comments and layout left out)."""
    doc = yaml.safe_load(Path(config).read_text())
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def write_record(outcome: RunOutcome, folder: str | Path) -> Path:
    """Write the record of a finished run's outcome to ``<folder>/<config stem>.json``."""
    if not outcome.finished:
        raise ValueError(f"{outcome.config}: not finished, nothing to record")
    doc = {k: v for k, v in dataclasses.asdict(outcome).items() if k not in _NOT_STORED}
    doc["config"] = outcome.config.as_posix()
    path = record_path(folder, outcome.config)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"record": RECORD_VERSION, "config_sha256": config_digest(outcome.config), "outcome": doc},
                      indent=1, sort_keys=True)
    write_atomic(path, (text + "\n").encode())
    return path


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a field of type ``hint`` (tuples are JSON lists)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is Path:
        return isinstance(value, str)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is tuple:
        return isinstance(value, list) and len(value) == len(args) and all(map(_fits, value, args))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, hint)


def _as_field(value: Any, hint: Any) -> Any:
    """Back from JSON: tuples (lists in the file) and paths."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Path:
        return Path(value)
    if origin is list and typing.get_origin(args[0]) is tuple:
        return [tuple(v) for v in value]
    return value


def read_record(path: str | Path, config: str | Path) -> RunOutcome:
    """The outcome recorded for ``config`` in the record file ``path``; raises :class:`ConfigError`
    naming the file when it cannot be read, is not a finished run's record, or belongs to another
    config or to another version of this one."""
    path, config = Path(path), Path(config)

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{path}: not a usable run record: {why} (rewrite it with `mkd-pipeline report --results "
                           f"{config.as_posix()} --record-to {path.parent.as_posix()}` after running the row, or delete it)")

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise bad(f"cannot read it as JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("record") != RECORD_VERSION or not isinstance(doc.get("outcome"), dict):
        raise bad(f"expected {{\"record\": {RECORD_VERSION}, \"config_sha256\": ..., \"outcome\": {{...}}}}")
    got = doc["outcome"]
    unknown, missing = sorted(set(got) - set(_FIELDS)), sorted(_REQUIRED - set(got))
    if unknown or missing:
        raise bad("; ".join([f"unknown field(s) {', '.join(unknown)}"] * bool(unknown)
                            + [f"missing field(s) {', '.join(missing)}"] * bool(missing)))
    wrong = [k for k, v in got.items() if not _fits(v, _HINTS[k])]
    if wrong:
        raise bad("wrong type of " + ", ".join(f"{k} ({json.dumps(got[k])[:40]})" for k in sorted(wrong)))
    if Path(got["config"]).stem != config.stem:
        raise bad(f"it records {got['config']}, not {config.as_posix()}")
    if not got.get("finished") or got.get("top1") is None:
        raise bad("the run it records did not finish")
    if doc.get("config_sha256") != config_digest(config):
        raise bad(f"{config.as_posix()} has changed since the run it records")
    fields = {k: _as_field(v, _HINTS[k]) for k, v in got.items()}
    return RunOutcome(**dict(fields, config=config, record=path))
