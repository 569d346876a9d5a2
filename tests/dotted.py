"""Dotted-key overrides of a config document, as the tests write them: ``train__lr=1e-3`` sets
``doc["train"]["lr"]``."""

from __future__ import annotations

from typing import Any


def apply_dotted(doc: dict, changes: dict[str, Any], *, create: bool = False) -> dict:
    """Set every ``a__b__c`` key of ``changes`` in ``doc`` (in place; returns ``doc``).

    A missing parent section is a KeyError (a typo in a test), unless ``create``.
    """
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = doc
        for p in parents:
            node = node.setdefault(p, {}) if create else node[p]
        node[leaf] = value
    return doc
