"""Read a stage YAML file (plus ``--set section.field=value`` overrides) into a validated
:class:`~pipeline.config.schema.StageConfig`, and print one resolved; errors name the file, the
override and the dotted field (exit code 2)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.compute import SCHEDULER_ENV
from pipeline.config.schema import StageConfig
from pipeline.config.validation import FieldProblems, check_address, did_you_mean
from pipeline.errors import ConfigError

# Friendlier words for unknown keys users are likely to try.
_HINTS = {
    ("train", "epochs"): "the student's epochs are schedule.epochs",
    ("student", "train"): "the student is trained by the stage itself; its recipe is the top-level train block",
    ("data", "crop_pct"): "the evaluation crop is each model's: teacher.crop_pct, student.crop_pct",
    ("teacher", "num_classes"): "the head's size is teacher.kwargs.num_classes; the dataset's is data.num_classes",
    ("student", "num_classes"): "the head's size is student.kwargs.num_classes; the dataset's is data.num_classes",
    ("teacher", "hf_hub_id"): "name the model hf-hub:ORG/NAME with pretrained: true",
    ("student", "hf_hub_id"): "name the model hf-hub:ORG/NAME with pretrained: true",
}

# ----------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """Safe YAML loader: YAML 1.2 booleans only (true/false), duplicate keys are an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:
                continue  # unhashable key: the base class reports it
            if dup:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _read_yaml(path: Path, shown: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{shown}: is a folder, expected a stage YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{shown}: cannot read: {e}") from None
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError(f"{shown}: {where}invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{shown}: invalid YAML: {e}") from None
    if doc is None:
        raise ConfigError(f"{shown}: the file is empty; expected a mapping with name, data, teacher, student, "
                          "schedule, masking, ...")
    if not isinstance(doc, dict):
        raise ConfigError(f"{shown}: the top level must be a mapping (name: ..., data: ...), got {type(doc).__name__}")
    bad = [k for k in doc if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{shown}: top-level keys must be strings, got {bad[0]!r}")
    return doc


# ----------------------------------------------------------------------------- overrides

_DOTTED = re.compile(r"^[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*$")


def parse_override(text: str) -> tuple[str, Any]:
    """``section.field=value`` -> ``("section.field", value)``, the value read as YAML like the file.

    Scalars and flow collections as in a stage file: ``[0.6, 1.0]`` is a list, ``off`` a string
    (YAML 1.2 booleans), an empty value null.

    Raises:
        ValueError: no ``=``, a malformed dotted field, or a value that is not valid YAML.
    """
    dotted, sep, raw = text.partition("=")
    dotted = dotted.strip()
    if not sep or not _DOTTED.match(dotted):
        raise ValueError("expected SECTION.FIELD=VALUE, e.g. --set train.lr=5e-4")
    try:
        value = yaml.load(raw, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        what = " ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise ValueError(f"the value is not valid YAML: {what}") from None
    return dotted, value


def _unshared(node: Any) -> Any:
    """A copy in which no two places hold the same dict or list: a YAML alias (``*kw``) is one
    object in several places, and an override of one place must not change the others."""
    if isinstance(node, dict):
        return {k: _unshared(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unshared(v) for v in node]
    return node


def set_fields(doc: dict, fields: Mapping[str, Any]) -> dict:
    """Set each dotted field of ``fields`` (``"train.lr"``) in ``doc``, in place; returns ``doc``.

    Missing or null sections on the way are created, so a misspelt section reaches validation
    and is reported like an unknown key in the file.

    Raises:
        ValueError: a part of the path holds a value that is not a section (a mapping).
    """
    for dotted, value in fields.items():
        *parents, leaf = dotted.split(".")
        node = doc
        for i, key in enumerate(parents):
            if node.get(key) is None:
                node[key] = {}
            elif not isinstance(node[key], dict):
                where = ".".join(parents[:i + 1])
                raise ValueError(f"{where} is a {type(node[key]).__name__}, not a section with fields")
            node = node[key]
        node[leaf] = value
    return doc


def _model_at(loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """Dotted path of a pydantic error location, and the model class that path ends in."""
    ann: Any = StageConfig
    path = ""
    for part in loc:
        model = _find_model(ann)
        if isinstance(part, str) and model is not None and part in model.model_fields:
            path = f"{path}.{part}" if path else part
            ann = model.model_fields[part].annotation
        elif isinstance(part, int) and get_origin(ann) in (list, tuple):
            path = f"{path}[{part}]"
            args = get_args(ann)
            ann = args[0] if args else Any
        elif isinstance(part, str) and get_origin(ann) is dict:
            path = f"{path}.{part}"
            ann = Any
        else:
            break  # a union member's tag: the field's own path is the useful one
    return path, _find_model(ann)


def _find_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in get_args(ann):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def _source(shown: str, path: str, overrides: Sequence[tuple[str, str]]) -> str:
    """The file, or the file and the last ``--set`` that wrote ``path`` or a section above or below it."""
    for text, dotted in reversed(overrides):
        if path == dotted or path.startswith((f"{dotted}.", f"{dotted}[")) or dotted.startswith(f"{path}."):
            return f"{shown} (--set {text})"
    return shown


def _format_errors(err: ValidationError, shown: str, overrides: Sequence[tuple[str, str]] = ()) -> str:
    lines: list[str] = []
    for e in err.errors():
        loc = tuple(e["loc"])
        ctx = e.get("ctx") or {}
        cause = ctx.get("error")
        if isinstance(cause, FieldProblems):
            base, _ = _model_at(loc)
            for field, msg in cause.problems:
                full = ".".join(x for x in (base, field) if x).replace(".[", "[")
                lines.append(f"{_source(shown, full, overrides)}: {full or '(top level)'}: {msg}")
            continue
        if e["type"] == "extra_forbidden":
            parent, model = _model_at(loc[:-1])
            key = str(loc[-1])
            allowed = list(model.model_fields) if model else []
            hint = _HINTS.get((parent, key))
            msg = f"unknown key {key!r}" + (f" ({hint})" if hint else did_you_mean(key, allowed))
            if allowed:
                msg += f"; allowed: {', '.join(allowed)}"
            full = f"{parent + '.' if parent else ''}{key}"
            lines.append(f"{_source(shown, full, overrides)}: {full}: {msg}")
            continue
        path, _ = _model_at(loc)
        if e["type"] == "missing":
            msg = "required, missing"
        else:
            msg = e["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
            if not isinstance(e.get("input"), dict) and "got" not in msg:
                msg += f", got {e.get('input')!r}"
        lines.append(f"{_source(shown, path, overrides)}: {path or '(top level)'}: {msg}")
    unique = list(dict.fromkeys(lines))
    return "\n".join(unique)


def load_config(path: str | Path, *, check_files: bool = True, overrides: Sequence[str] = ()) -> StageConfig:
    """Read and validate a stage YAML file, with ``--set`` overrides applied first. Writes nothing.

    Args:
        path: the YAML file; shown in error messages as given.
        check_files: check that the dataset folder (with manifest.json) and weights files exist;
            False validates a config for another machine (``config check --no-files``).
        overrides: ``section.field=value`` strings (see :func:`parse_override`), applied in order
            to the document before validation, so they are validated like the file.

    Returns:
        The validated config, with relative paths made absolute (against the working
        directory), ``schedule.every`` expanded into milestones, and ``compute.scheduler``
        filled from ``$MKD_SCHEDULER`` when null.

    Raises:
        ConfigError: naming the file (and the ``--set`` override, where one wrote the field) and
            the dotted field of each problem, one per line.
    """
    shown = str(path)
    doc = _read_yaml(Path(path), shown)
    applied: list[tuple[str, str]] = []
    if overrides:
        doc = _unshared(doc)
    for text in overrides:
        try:
            dotted, value = parse_override(text)
            set_fields(doc, {dotted: value})
        except ValueError as e:
            raise ConfigError(f"{shown} (--set {text}): {e}") from None
        applied.append((text, dotted))
    try:
        cfg = StageConfig.model_validate(doc, context={"check_files": check_files})
    except ValidationError as e:
        raise ConfigError(_format_errors(e, shown, applied)) from None
    if cfg.compute.scheduler is None and os.environ.get(SCHEDULER_ENV, "").strip():
        address = os.environ[SCHEDULER_ENV].strip()
        try:
            check_address(address)
        except ValueError as e:
            raise ConfigError(f"{shown}: compute.scheduler (from ${SCHEDULER_ENV}): {e}") from None
        cfg.compute.scheduler = address
    return cfg


class _Dumper(yaml.SafeDumper):
    """Block mappings, flow lists: reads like the stage files."""


_Dumper.add_representer(
    list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
)


def dump_config(cfg: StageConfig, overrides: Sequence[str] = ()) -> str:
    """The resolved config as YAML (loads again to the same config), with the ``--set`` overrides
    it was loaded with and derived values as comments."""
    lines = ["# resolved stage config (mkd-pipeline config check)"]
    lines += [f"# --set {' '.join(text.splitlines())}" for text in overrides]  # one comment line each
    n = cfg.num_patches
    segs = cfg.schedule.segments()
    keeps = [cfg.keep_for_segment(i) for i in range(len(segs))] if n is not None else []
    lengths = {b - a for a, b in segs}
    if len(lengths) == 1:
        lines.append(f"# {len(segs)} segment(s) of {lengths.pop()} epoch(s), milestones {cfg.schedule.milestones}")
    else:
        lines.append(f"# {len(segs)} segment(s) (start, end epoch): {segs}")
    if n is not None:
        shown = f"{keeps[0]} in every segment" if len(set(keeps)) == 1 else f"{keeps} per segment"
        lines.append(f"# teacher keeps {shown}, of {n} patches")
    lines.append(f"# student learning rate: {cfg.train.learning_rate:g}")
    if cfg.teacher.train is not None:
        lines.append(f"# teacher learning rate: {cfg.teacher.train.learning_rate:g}")
    body = yaml.dump(cfg.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False, width=100)
    return "\n".join(lines) + "\n" + body
