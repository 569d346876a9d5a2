"""`mkd-pipeline labels inspect|verify`: look into a label store from the shell."""

from __future__ import annotations

import json

import click
import pyarrow.fs as pafs

from pipeline.errors import PipelineError
from pipeline.labels import paths
from pipeline.labels.heal import QUARANTINE, quarantine_all
from pipeline.labels.summary import summarize
from pipeline.labels.verify import verify_store


@click.command("inspect")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def labels_inspect(path: str, as_json: bool) -> None:
    """Show a label partition: schema, fingerprints, rows, bytes per row and label statistics.

    PATH is a partition file (local path or URI such as s3://bucket/store/...parquet). Given a
    store directory, lists its partitions instead.
    """
    fs, fs_path = paths.resolve(path)
    if fs.get_file_info(fs_path).type == pafs.FileType.Directory:
        listing = paths.list_partitions(path)
        click.echo(json.dumps(listing, indent=2) if as_json else "\n".join(listing) or f"no partitions under {path}")
        return
    info = summarize(path)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    meta, layout = info["metadata"], info["metadata"]["layout"]
    counters, fps = meta["counters"], meta["fingerprints"]
    target = "all classes (float16 log-probabilities)" if layout["topk"] == "all" else f"top-{layout['topk']} + lse"
    taus = ", ".join(f"{t:g}" for t in [1.0, *layout["lse_taus"]])
    lines = [
        f"partition   {path}",
        f"shard       {meta['shard']}   view epoch {meta['view_epoch']}   format {meta['format']}"
        f"   written by mkd-pipeline {meta['package_version']}",
        f"rows        {info['rows']:,}   bytes {info['bytes']:,}   ({info['bytes_per_row']:.1f} per row,"
        f" {info['row_groups']} row group{'s' if info['row_groups'] != 1 else ''})",
        f"labels      {target} of {layout['num_classes']} classes; logsumexp at tau {taus}",
        f"patches     {layout['num_patches']} (keep bitset)   view columns: {', '.join(layout['view_columns']) or '-'}",
        f"counters    rows computed {counters['rows_computed']:,}, reused {counters['rows_reused']:,},"
        f" teacher MACs {counters['teacher_macs']:.3g}",
        "fingerprints " + "  ".join(f"{k} {(v or '-')[:12]}" for k, v in sorted(fps.items())),
        "",
        f"teacher top-1 agrees with label   {info['teacher_top1_agreement']:.1%}",
        f"mean kept fraction                {_kept_fraction(info)}",
        "mean top-K probability mass       "
        + ("n/a (all classes stored)" if info["mean_topk_mass"] is None else f"{info['mean_topk_mass']:.3f}"),
        "",
        "column        type                                   bytes/row",
    ]
    lines += [f"{c['name']:<13} {c['type']:<38} {c['bytes_per_row']:>9.2f}" for c in info["columns"]]
    click.echo("\n".join(lines))


def _kept_fraction(info: dict) -> str:
    """The mean kept fraction, or n/a naming the forward policy whose rows store no keep set."""
    forward = info["forward_policy"]
    if forward is None:
        return f"{info['mean_kept_fraction']:.3f}"
    return (f"n/a (policy {forward['policy']} keeps no patch set: the teacher saw the whole view, its forward cut "
            f"to the cost of keep {forward['keep']} of {info['metadata']['layout']['num_patches']} = "
            f"{forward['keep_fraction']:.3f})")


@click.command("verify")
@click.argument("store")
@click.option("--lock", "locks", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Run lock to check rows and sha256 against (repeatable); STORE/*.lock.json are used too.")
@click.option("--repair", is_flag=True,
              help=f"Move every bad partition file into STORE/{QUARANTINE}/; the next `run` recomputes it.")
def labels_verify(store: str, locks: tuple[str, ...], repair: bool) -> None:
    """Check every partition under STORE: readable, schema, every page checksum, row count, and
    sha256 against the run lock(s). Exits 1 listing the bad files (with ``--repair``: 0 once every
    bad file is moved aside, 1 while a lock names a missing one)."""
    report = verify_store(store, locks)
    present = set(report.checked)  # a partition a lock names but the store lacks has nothing to move
    moved = quarantine_all(store, [(p, r) for p, r in report.problems if p in present]) if repair else []
    for path, reason in report.problems:
        click.echo(f"BAD  {path}: {reason}")
    for q in moved:
        click.echo(f"moved {q['path']} -> {q['moved_to']}: the next `mkd-pipeline run` recomputes it")
    for path in report.temp_files:
        click.echo(f"note {path}: temp file of an interrupted write (safe to delete)")
    bad = len(report.problems)
    locks_note = f"against {len(report.locks)} run lock(s)" if report.locks else "no run lock found (sha256 not checked)"
    click.echo(f"{len(report.checked) - sum(p in report.checked for p, _ in report.problems)} of "
               f"{len(report.checked)} partitions OK under {store}, {locks_note}")
    if bad > len(moved):
        hint = "" if repair else f"; `mkd-pipeline labels verify {store} --repair` moves the bad ones aside"
        raise PipelineError(f"{bad - len(moved)} bad or missing partition file(s) under {store}{hint}", exit_code=1)
