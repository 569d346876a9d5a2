"""``mkd-pipeline report``: a results page (tables and figures) from any set of finished runs.

The command imports its implementation inside its body, the one function-local import here:
``mkd-pipeline --help`` imports this module to list the commands, and reading runs imports torch
and timm (to count teacher MACs) and matplotlib (2-4 s).
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline._atomic import write_atomic


@click.command("report")
@click.option("--results", "configs", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Stage configs of the rows (repeat, or pass a shell glob).")
@click.argument("more", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--spec", "spec_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Results spec (TOML) kept with the experiment: row order, comparisons, targets, its words "
                   "[default: every row alphabetically, no comparisons]. RESULTS.md's: stages/results/results.toml.")
@click.option("--out", type=click.Path(dir_okay=False), default="RESULTS.md", show_default=True,
              help="Markdown file to write; the PNGs go beside it.")
@click.option("--notes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Markdown appended verbatim (the hand-written reading of the numbers; no numbers in it).")
@click.option("--logs", type=click.Path(file_okay=False), default="runs/logs", show_default=True,
              help="Folder of the run logs (<config stem>.log; their `# uptime` lines give the load averages).")
@click.option("--probes", type=click.Path(file_okay=False), default="runs/probes", show_default=True,
              help="Folder of `mkd-pipeline probe --json` outputs (<name>.json) to show as curves.")
def report_cmd(configs: tuple[str, ...], more: tuple[str, ...], spec_path: str | None, out: str, notes: str | None,
               logs: str, probes: str) -> None:
    """Build a results page from finished runs: one row per `# Row:` label, seeds averaged.

    RESULTS.md: mkd-pipeline report --spec stages/results/results.toml --results stages/results/*.yaml
    --out RESULTS.md --notes stages/results/NOTES.md
    """
    from pipeline.report import collect, results, spec  # lazy: torch, timm and matplotlib (see the module doc)

    paths = list(dict.fromkeys([*configs, *more]))
    runs = [collect.collect_run(p, Path(logs)) for p in paths if Path(p).suffix in (".yaml", ".yml")]
    outp = Path(out)
    page = results.render_results(runs, outp, spec.load_spec(spec_path) if spec_path else None,
                                  Path(notes).read_text() if notes else None, notes, probes=Path(probes))
    write_atomic(outp, page.encode())
    done = sum(r.finished for r in runs)
    click.echo(f"{outp}: {done} of {len(runs)} configs finished")
