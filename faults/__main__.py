"""``python -m faults``: run the fault suite (``make faults``; see docs/reliability.md).

Exit code 0 when no acknowledged message was lost, shown twice or shown out of
order; 1 otherwise (or if a node failed); 2 for bad options.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import trio

from .kinds import KINDS
from .run import DEFAULT_KINDS, Config, run_suite


def _kinds(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if not value:
        return DEFAULT_KINDS
    names = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in names if k not in KINDS]
    if unknown:
        raise click.BadParameter(f"unknown kind(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(KINDS)}")
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of every random choice.")
@click.option("--rounds", type=click.IntRange(min=1), default=15, show_default=True,
              help="Rounds to run (each: one fault with traffic, heal, drain).")
@click.option("--kinds", callback=_kinds, help="Comma-separated fault kinds (default: all). "
              "--list-kinds shows them.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the full report as JSON here.")
@click.option("--nodes", type=click.IntRange(min=2), default=3, show_default=True)
@click.option("--sends", type=click.IntRange(min=1), default=3, show_default=True,
              help="Messages each primary sends per round.")
@click.option("--deadline", type=click.FloatRange(min=1), default=45.0, show_default=True,
              help="Seconds after the heal for every acknowledged message to be shown.")
@click.option("--keepalive", type=click.FloatRange(min=0), default=4.0, show_default=True,
              help="Keepalive interval and timeout (seconds) of the nodes and of wa-cli "
                   "(WA_KEEPALIVE, WA_KEEPALIVE_TIMEOUT); 0: their defaults (20 and 10).")
@click.option("--launch", type=click.Choice(["fork", "exec"]), default="fork",
              show_default=True, help="fork: wa-cli commands are forked from a process "
              "that imported wa-cli once (faults/zygote.py); exec: each is a fresh wa-cli.")
@click.option("--plain", is_flag=True,
              help="Nodes listen on plain ws:// on loopback (init-cluster "
                   "--insecure-loopback), as behind a local TLS proxy; default wss://.")
@click.option("--max-seconds", type=click.FloatRange(min=0),
              help="Start no new round after this many seconds; the report covers the "
                   "rounds run (e.g. '120 of 1000 rounds').")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep nodes' data, logs and device homes here (default: a temporary "
                   "directory, removed if the run passed).")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
@click.option("--list-kinds", is_flag=True, help="List the fault kinds and exit.")
def main(seed: int, rounds: int, kinds: tuple[str, ...], json_path: Path | None, nodes: int,
         sends: int, deadline: float, keepalive: float, launch: str, plain: bool,
         max_seconds: float | None, workdir: Path | None,
         quiet: bool,
         list_kinds: bool) -> None:
    """Drive real wa-relay nodes and wa-cli devices through seeded faults and check
    that every acknowledged message is shown once, in order, on every device."""
    if list_kinds:
        for kind in KINDS.values():
            known = f"  [expected to fail until: {kind.known}]" if kind.known else ""
            click.echo(f"{kind.name:14} {kind.doc}{known}")
        return
    cfg = Config(seed=seed, rounds=rounds, kinds=kinds, nodes=nodes, sends=sends,
                 deadline=deadline, keepalive=keepalive or None, launch=launch, plain=plain,
                 max_seconds=max_seconds, workdir=workdir, quiet=quiet)
    report = trio.run(run_suite, cfg)
    click.echo(report.table)
    if json_path is not None:
        report.write_json(json_path)
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
