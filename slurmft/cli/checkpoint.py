"""``slurmft checkpoint``: list, verify and prune a checkpoint directory."""

from __future__ import annotations

import sys
from typing import Any

import click

from slurmft.cli.options import count, echo_json
from slurmft.core.errors import CheckpointError, CorruptCheckpointError, PruneError, UsageError

COLUMNS = ["name", "step", "kind", "base", "MB", "time (UTC)", "world", "status"]


def _store(path: str) -> Any:
    from pathlib import Path

    from slurmft.checkpoint.store import Store

    if not Path(path).is_dir():
        raise UsageError(f"{path} is not a checkpoint directory")
    return Store(path)


def _table(rows: list[dict], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for c in columns:
        table.add_column(c, no_wrap=c != "status")
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in columns])
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)


def _row(info: Any, latest: str | None, status: str) -> dict:
    import datetime as dt

    when = (dt.datetime.fromtimestamp(info.time, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            if info.time else "-")
    return {"name": info.name + (" *" if info.name == latest else ""), "step": info.step,
            "kind": info.kind if info.time else "?", "base": info.base or "-",
            "MB": f"{sum(f.size for f in info.files) / 1e6:.1f}", "time (UTC)": when,
            "world": info.world_size, "status": status}


def _names_to_verify(store: Any, path: str, name: str | None) -> list[str]:
    from slurmft.checkpoint.store import parse_name

    if name and parse_name(name) is None:
        raise UsageError(f"{name!r} is not a checkpoint name (step_<12 digits>)")
    known = store.names()
    if name and name not in known:
        raise CheckpointError(f"no such checkpoint {name} in {path}"
                              + (f"; it has {', '.join(known[-3:])}" if known else ""))
    if not known:
        raise CheckpointError(f"no checkpoints in {path}: nothing verified (is it the "
                              "job's checkpoint directory, not its parent?)")
    return [name] if name else known


def _verify_one(store: Any, name: str) -> tuple[Any, str | None]:
    """(info, None) for a valid checkpoint; (what its manifest says, why) for a corrupt one."""
    from slurmft.checkpoint.store import CheckpointInfo, parse_name

    try:
        return store.verify(name), None
    except CorruptCheckpointError as exc:
        info = CheckpointInfo(name=name, path=str(store.root / name),
                              step=parse_name(name) or 0, error=str(exc))
        try:
            info = store.read_manifest(name)
            info.error = str(exc)
        except CorruptCheckpointError:
            pass
        return info, str(exc)


@click.group("checkpoint")
def checkpoint_group() -> None:
    """Inspect, verify and prune a checkpoint directory (* marks latest)."""


@checkpoint_group.command("list")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def checkpoint_list(path: str, as_json: bool) -> None:
    """List checkpoints in PATH, newest first, from their manifests (fast; see verify)."""
    store = _store(path)
    infos, latest = store.list(), store.latest_name()
    if as_json:
        echo_json({"latest": latest, "checkpoints": [i.summary() for i in infos]})
        return
    _table([_row(i, latest, "manifest ok" if not i.error else i.error) for i in infos], COLUMNS)


@checkpoint_group.command("verify")
@click.argument("path", type=click.Path())
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def checkpoint_verify(path: str, name: str | None, as_json: bool) -> None:
    """Read back every file of every checkpoint (or NAME) and check sizes and checksums.

    Exit 0 if all are valid; 1 naming the first corrupt file and why.
    """
    store = _store(path)
    names = _names_to_verify(store, path, name)
    latest = store.latest_name()
    rows, docs, errors = [], [], []
    for n in names:
        info, error = _verify_one(store, n)
        if error:
            errors.append(error)
        rows.append(_row(info, latest, "CORRUPT" if error else "ok"))
        docs.append(info.summary())
    if as_json:
        echo_json({"latest": latest, "checkpoints": docs, "valid": not errors})
    else:
        _table(rows, COLUMNS)
    if errors:
        raise CorruptCheckpointError(
            f"{len(errors)} of {len(names)} checkpoint(s) corrupt: {errors[0]}")


@checkpoint_group.command("prune")
@click.argument("path", type=click.Path())
@click.option("--keep-last", type=count(1), required=True,
              help="Keep this many newest checkpoints that verify (plus latest, anything newer "
                   "than the oldest of them, and any base a kept diff needs).")
@click.option("--dry-run", is_flag=True,
              help="Say what would be deleted and kept; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def checkpoint_prune(path: str, keep_last: int, dry_run: bool, as_json: bool) -> None:
    """Delete old checkpoints and leftovers of interrupted saves (run it while no job writes).

    The newest checkpoint that verifies is never deleted, a corrupt newer one never makes a
    good one go, and each delete is all or nothing; exit 1 if any could not be deleted."""
    store = _store(path)
    if not store.names():
        raise CheckpointError(f"no checkpoints in {path}: nothing pruned (is it the job's "
                              "checkpoint directory, not its parent?)")
    if dry_run:
        kept, doomed = store.retention(keep_last)
        if as_json:
            echo_json({"dry_run": True, "would_delete": [i.name for i in doomed],
                       "would_keep": [i.name for i in kept]})
        else:
            click.echo(f"would delete {len(doomed)} checkpoint(s)"
                       f"{': ' + ', '.join(i.name for i in doomed) if doomed else ''}; "
                       f"would keep {len(kept)}: {', '.join(i.name for i in kept)}")
        return
    leftovers = store.cleanup()
    failed: dict[str, str] = {}
    error: PruneError | None = None
    try:
        deleted = store.prune(keep_last)
    except PruneError as exc:
        deleted, failed, error = list(exc.deleted), dict(exc.failed), exc
    if as_json:
        echo_json({"deleted": deleted, "failed": failed, "leftovers_removed": leftovers,
                   "kept": store.names()})
    else:
        click.echo(f"deleted {len(deleted)} checkpoint(s)"
                   f"{': ' + ', '.join(deleted) if deleted else ''}; "
                   f"removed {len(leftovers)} leftover(s); kept {len(store.names())}")
        for name, why in failed.items():
            click.echo(f"not deleted: {name}: {why}")
    if error is not None:
        raise error
