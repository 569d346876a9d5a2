"""Click options shared by commands of several packages. Light: ``mkd-pipeline --help`` imports it."""

from __future__ import annotations

import click

set_opt = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
    help="Override one field of the stage file (repeatable), validated like the file; the value is YAML "
         "(--set train.lr=5e-4 --set views.scale=[0.6,1.0]).",
)

scheduler_opt = click.option(
    "--scheduler", default=None, metavar="ADDRESS",
    help="Dask scheduler (tcp://host:8786); default: compute.scheduler, $MKD_SCHEDULER, $DASK_SCHEDULER_ADDRESS, "
         "else a LocalCluster.",
)
scheduler_file_opt = click.option(
    "--scheduler-file", default=None, metavar="FILE",
    help="Connect to the scheduler named in FILE, the JSON file `dask scheduler --scheduler-file FILE` writes.",
)


def scheduler_from_flags(scheduler: str | None, scheduler_file: str | None) -> str | None:
    """The address ``--scheduler`` / ``--scheduler-file`` give (None: neither; the config decides).

    Raises:
        click.UsageError: both were given (exit 2).
        ComputeError: the scheduler file is missing or unreadable (exit 5, naming the file).
    """
    if scheduler and scheduler_file:
        raise click.UsageError("give --scheduler or --scheduler-file, not both")
    if scheduler_file:
        from pipeline.precompute.address import read_scheduler_file  # light: json only

        return read_scheduler_file(scheduler_file)
    return scheduler
