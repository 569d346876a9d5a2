"""Which Dask scheduler precompute uses, as Dask users expect to say it.

Precedence (first one set wins):

1. ``--scheduler ADDRESS`` or ``--scheduler-file FILE`` on the command line (the JSON file that
   ``dask scheduler --scheduler-file FILE`` writes; its ``address`` field);
2. ``compute.scheduler`` in the stage config (which the loader fills from ``$MKD_SCHEDULER``
   when the file leaves it null);
3. Dask's own default: ``$DASK_SCHEDULER_ADDRESS``, i.e. the dask config key
   ``scheduler-address`` (also settable in ``~/.config/dask/*.yaml``);
4. none: an embedded ``LocalCluster``.

Light on purpose: the CLI reads a scheduler file before torch or distributed are imported.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pipeline.errors import ComputeError

log = logging.getLogger(__name__)

DASK_ENV = "DASK_SCHEDULER_ADDRESS"
DASK_KEY = "scheduler-address"


def read_scheduler_file(path: str | Path) -> str:
    """The scheduler address in a ``dask scheduler --scheduler-file`` JSON file.

    Raises:
        ComputeError: (exit 5, like a failed connection) naming the file when it is missing,
            unreadable, not JSON or has no ``address``.
    """
    shown = str(path)
    try:
        info = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ComputeError(
            f"scheduler file {shown} does not exist (start `dask scheduler --scheduler-file {shown}` first)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ComputeError(f"cannot read scheduler file {shown}: {exc}") from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or not address.strip():
        raise ComputeError(f"scheduler file {shown} has no 'address' (is it a `dask scheduler --scheduler-file`?)")
    log.debug("scheduler file %s: address %s", shown, address)
    return address.strip()


def dask_default_address() -> str | None:
    """Dask's configured default scheduler: ``$DASK_SCHEDULER_ADDRESS`` or config ``scheduler-address``."""
    # The environment is read now: dask.config only reads it once, at import.
    env = os.environ.get(DASK_ENV, "").strip()
    if env:
        return env
    import dask  # not at module top: see the module docstring

    value = dask.config.get(DASK_KEY, None)
    return (str(value).strip() or None) if value else None


def resolve_address(flag: str | None, configured: str | None) -> str | None:
    """The scheduler to connect to (``None``: start a LocalCluster), by the module's precedence."""
    for source, value in (("command line", flag), ("compute.scheduler", configured)):
        if value:
            log.debug("Dask scheduler %s (from the %s)", value, source)
            return value
    value = dask_default_address()
    if value:
        log.debug("Dask scheduler %s (from $%s / dask config %r)", value, DASK_ENV, DASK_KEY)
    else:
        log.debug("no Dask scheduler given: starting a LocalCluster")
    return value
