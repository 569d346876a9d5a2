"""What every stage-config section shares: the strict base model, the ``FieldProblems`` its
validators raise, and the small checks they have in common (see :mod:`pipeline.config.schema`)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo


class FieldProblems(ValueError):
    """Raised inside validators: ``(dotted field relative to the model, message)`` pairs."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in self.problems))


def check_files(info: ValidationInfo) -> bool:
    """Whether this validation checks that files exist (``load_config(check_files=...)``, default yes)."""
    ctx = info.context or {}
    return bool(ctx.get("check_files", True))


def abspath(p: Path) -> Path:
    """``p`` with ``~`` expanded, made absolute against the working directory (not resolving links)."""
    return Path(os.path.abspath(os.path.expanduser(p)))


def local_or_uri(v: Any) -> Any:
    """A local path made absolute (:func:`abspath`), or a URI (``s3://bucket/prefix``) kept as the string it is.

    Raises:
        ValueError: a URI with a query string: endpoints and keys belong in the environment.
    """
    if isinstance(v, str) and "://" in v:
        if "?" in v:
            raise ValueError(f"{v.split('?', 1)[0]}?...: no query string in a URI; give endpoints, regions and "
                             f"credentials in the environment (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ...)")
        return v
    return abspath(Path(v)) if isinstance(v, (str, Path)) else v


def did_you_mean(word: str, options: list[str] | set[str]) -> str:
    """`` (did you mean 'x'?)`` naming the option closest to ``word``, or ``""`` when none is close."""
    match = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def word_or_count(v: object, word: str) -> bool:
    """Whether ``v`` is ``word`` or an integer >= 1 (booleans are not counts)."""
    return v == word or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)


def check_address(v: str) -> str:
    """``v`` when it looks like a scheduler address (non-empty, no spaces); raises ValueError."""
    if not v.strip() or any(c.isspace() for c in v):
        raise ValueError(f"must be a scheduler address like tcp://host:8786, got {v!r}")
    return v


class Section(BaseModel):
    """A YAML section: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")
