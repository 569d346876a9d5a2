"""The ``mkd-pipeline`` command line: the public API of :mod:`pipeline`.

Subcommands live in the modules that implement them and are imported lazily, so
``mkd-pipeline --help`` answers without importing torch. To add a command, add one line to
``COMMANDS`` (or to a group's table) naming ``module:attribute`` of a ``click.Command``.
"""

from __future__ import annotations

import importlib
import sys

import click

from pipeline import __version__
from pipeline._console import configure
from pipeline.errors import PipelineError

# name -> "module:attr" of a click command, per group ("" is the top level).
COMMANDS: dict[str, dict[str, str]] = {
    "": {
        "run": "pipeline.run.cli:run_cmd",
        "status": "pipeline.run.cli:status_cmd",
        "precompute": "pipeline.run.cli:precompute_cmd",
        "probe": "pipeline.run.cli:probe_cmd",
        "gc": "pipeline.run.cli:gc_cmd",
        "report": "pipeline.report.cli:report_cmd",
    },
    "bench": {
        "teacher": "pipeline.bench.cli:bench_teacher",
        "store": "pipeline.bench.cli:bench_store",
        "data": "pipeline.bench.cli:bench_data",
        "train": "pipeline.bench.cli:bench_train",
        "precompute": "pipeline.bench.cli:bench_precompute",
        "lock": "pipeline.bench.cli:bench_lock",
        "saliency": "pipeline.bench.cli:bench_saliency",
        "reuse": "pipeline.bench.cli:bench_reuse",
    },
    "config": {
        "check": "pipeline.config.cli:config_check",
    },
    "data": {
        "import": "pipeline.data.cli:data_import",
        "verify": "pipeline.data.cli:data_verify",
    },
    "labels": {
        "inspect": "pipeline.labels.cli:labels_inspect",
        "verify": "pipeline.labels.cli:labels_verify",
    },
}

HELP = {
    "config": "Validate stage configs and print them resolved.",
    "bench": "Benchmarks (results go to BENCHMARKS.md).",
    "data": "Import, verify and inspect WebDataset shards.",
    "labels": "Inspect and verify Parquet label stores.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=COMMANDS[""])
@click.version_option(__version__, prog_name="mkd-pipeline")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs of the pipeline's modules on stderr.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (they show only when stderr is a terminal anyway).")
def cli(verbose: bool, quiet: bool) -> None:
    """Offline MaskedKD: precompute saliency-masked teacher soft labels, train students on them."""
    configure(verbose=verbose, quiet=quiet)  # once per invocation, before any subcommand runs


for _group, _table in COMMANDS.items():
    if _group:
        cli.add_command(LazyGroup(name=_group, lazy=_table, help=HELP.get(_group)))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the CLI and turns :class:`PipelineError` into its exit code."""
    try:
        cli.main(args=argv, prog_name="mkd-pipeline", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except PipelineError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    sys.exit(0)
