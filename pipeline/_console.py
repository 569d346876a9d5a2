"""What the CLI shows on stderr besides its results: progress bars and log lines.

The top-level ``mkd-pipeline`` group calls :func:`configure` once per invocation with its global
``-q/--quiet`` and ``-v/--verbose`` flags. Bars (tqdm, on stderr) show only when stderr is a
terminal and ``-q`` was not given, so logs redirected to a file hold no carriage-return noise;
``-v`` turns on the DEBUG logs of the ``pipeline`` and ``maskedkd`` modules (each has a
``logging.getLogger(__name__)``). Light: imported by ``mkd-pipeline --help``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

_PACKAGES = ("pipeline", "maskedkd")
_state = {"quiet": False}


class _BarSafeHandler(logging.Handler):
    """Writes records to the *current* ``sys.stderr`` (click's test runner swaps it) through
    ``tqdm.write``, so a log line does not break an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure(*, verbose: bool = False, quiet: bool = False) -> None:
    """Set up bars and logging for this process (idempotent: a second call replaces the first).

    ``verbose``: DEBUG logs of ``pipeline.*`` and ``maskedkd.*``; otherwise WARNING and up, as
    without any configuration. ``quiet``: no progress bars.
    """
    _state["quiet"] = bool(quiet)
    for name in _PACKAGES:
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if isinstance(h, _BarSafeHandler)]:
            logger.removeHandler(h)
        handler = _BarSafeHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
        logger.addHandler(handler)
        # NOTSET without -v: the level stays inherited from the root logger, as before (tests' caplog)
        logger.setLevel(logging.DEBUG if verbose else logging.NOTSET)


def bars_enabled() -> bool:
    """Whether progress bars should show: stderr is a terminal and ``-q`` was not given."""
    if _state["quiet"]:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress_bar(*, total: int | None, desc: str | None, unit: str, enabled: bool = True, **kwargs: Any):
    """A tqdm bar on stderr (the conventions of precompute's task bar), disabled unless
    ``enabled`` and :func:`bars_enabled`. A disabled bar accepts every call and draws nothing."""
    from tqdm import tqdm  # not at module top: see the module docstring

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=not (enabled and bars_enabled()), **kwargs)
