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
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Markdown file to write; the PNGs go beside it [default: RESULTS.md; none with --record-to].")
@click.option("--notes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Markdown appended verbatim (the hand-written reading of the numbers; no numbers in it).")
@click.option("--logs", type=click.Path(file_okay=False), default="runs/logs", show_default=True,
              help="Folder of the run logs (<config stem>.log; their `# uptime` lines give the load averages).")
@click.option("--probes", type=click.Path(file_okay=False), default="runs/probes", show_default=True,
              help="Folder of `mkd-pipeline probe --json` outputs (<name>.json) to show as curves.")
@click.option("--records", "records_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of committed run records (<config stem>.json), read for configs without a finished run "
                   "folder [default: records/ beside each config].")
@click.option("--record-to", type=click.Path(file_okay=False), default=None,
              help="Write the record of each config whose run folder holds a finished run into this folder "
                   "(and no page unless --out is given).")
def report_cmd(configs: tuple[str, ...], more: tuple[str, ...], spec_path: str | None, out: str | None, notes: str | None,
               logs: str, probes: str, records_dir: str | None, record_to: str | None) -> None:
    """Build a results page from finished runs: one row per `# Row:` label, seeds averaged.

    RESULTS.md: mkd-pipeline report --spec stages/results/results.toml --results stages/results/*.yaml
    --out RESULTS.md --notes stages/results/NOTES.md --probes stages/results/records/probes

    A config without a finished run folder is read from its committed record when there is one
    (`--record-to DIR` writes them after the runs); the page and this command say which.
    """
    from pipeline.report import records, results, spec  # lazy: torch, timm and matplotlib (see the module doc)

    paths = list(dict.fromkeys([*configs, *more]))
    runs = [records.read_outcome(p, Path(logs), records_dir) for p in paths if Path(p).suffix in (".yaml", ".yml")]
    if record_to is not None:
        for r in runs:
            if r.finished and r.record is None and r.teacher_train is None:
                click.echo(f"{records.write_record(r, record_to)}: record of {r.config.as_posix()}")
    if out is None and record_to is not None:
        return
    outp = Path(out or "RESULTS.md")
    sp = spec.load_spec(spec_path) if spec_path else None
    if sp is not None:
        runs = [r for r in runs if sp.shows(r.row)]
    page = results.render_results(runs, outp, sp,
                                  Path(notes).read_text() if notes else None, notes, probes=Path(probes))
    write_atomic(outp, page.encode())
    done = sum(r.finished for r in runs)
    recorded = [r.config.stem for r in runs if r.record is not None]
    click.echo(f"{outp}: {done} of {len(runs)} configs finished"
               + (f" ({len(recorded)} read from records: {', '.join(recorded)})" if recorded else ""))
