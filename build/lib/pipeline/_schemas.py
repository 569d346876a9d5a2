"""The JSON Schemas of every manifest kind (dataset, label partition, run lock), shipped inside
the package (``pipeline/schemas/``; ``manifests/`` in the repository links to them), and the one
place they are loaded and checked."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema

SCHEMAS = ("dataset", "label-partition", "run-lock")


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """The parsed schema ``pipeline/schemas/<name>.schema.json``."""
    if name not in SCHEMAS:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMAS)}")
    return json.loads(resources.files("pipeline.schemas").joinpath(f"{name}.schema.json").read_text())


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(name))


def json_problem(name: str, obj: Any, sep: str = ".") -> str | None:
    """Why ``obj`` fails schema ``name`` (``"field.path: message"``, parts joined by ``sep``), or None
    when it fits."""
    error = jsonschema.exceptions.best_match(_validator(name).iter_errors(obj))
    if error is None:
        return None
    where = sep.join(str(p) for p in error.absolute_path) or "(top level)"
    return f"{where}: {error.message}"
