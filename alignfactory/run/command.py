"""`alignfactory run SPEC [options]`, and `python -m alignfactory.run SPEC [options]` (what `ray job
submit` runs): the arguments, the console (a progress line per stage and warnings; the rest goes to
<run>/run.log), the run, the cost table, the exit code (0 done, 2 a bad spec, input or run dir,
3 stopped by the budget, 4 the run dir is being written by another run). cli.py mounts
add_arguments and run as its `run` subcommand; this package never imports cli."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from alignfactory.console import attach_run_log, sync_run_log
from alignfactory.cost import table
from alignfactory.io import InputError
from alignfactory.progress import Progress, Silent
from alignfactory.run.runner import Runner
from alignfactory.run.shards import NotShared
from alignfactory.spec import SpecError, load_spec
from alignfactory.storage import LeaseHeld, StorageError


def add_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("spec", help="pipelines/<name>.yaml")
    r.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec value, e.g. --set stages.1.params.n=4 (repeatable)",
    )
    r.add_argument("--limit", type=int, help="read at most N input rows")
    r.add_argument("--output", help="run directory (default runs/<name>)")
    r.add_argument(
        "--model", help="local HF dir, .gguf file, or hub id (default: embedded SmolLM2-135M-Instruct)"
    )
    r.add_argument("--backend", choices=["auto", "transformers", "vllm", "openai"])
    r.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress lines")
    r.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="the run log (and Ray workers' output) here too, not only in <run>/run.log",
    )
    r.add_argument("--ray-progress", action="store_true", help="show Ray Data's own progress bars too")


def parser() -> argparse.ArgumentParser:
    """The `alignfactory run` parser on its own (the same prog and help as the cli's subcommand)."""
    p = argparse.ArgumentParser(prog="alignfactory run")
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    # one line per stage (in place on a terminal); logs print above it
    progress = Silent() if args.quiet else Progress(sys.stderr)
    if args.ray_progress:
        os.environ["ALIGNFACTORY_PROGRESS"] = "1"  # Ray Data's own bars, read by ray_plumbing.ensure_ray
    if args.verbose:
        os.environ["ALIGNFACTORY_VERBOSE"] = "1"  # workers' output on the console, read by ensure_ray
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    handler = progress.handler(fmt)
    handler.setFormatter(fmt)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, handlers=[handler])
    try:
        spec = load_spec(
            args.spec, args.sets, limit=args.limit, output=args.output, model=args.model, backend=args.backend
        )
        runner = Runner(spec, args.spec, args.output, progress=progress)
        log_file = attach_run_log(runner.root, verbose=args.verbose)
        if not args.quiet:
            print(
                f"alignfactory: {spec.name} -> {runner.root}  (log: {log_file}; -v prints it here)",
                file=sys.stderr,
            )
        try:
            manifest = runner.run()
        finally:
            sync_run_log()  # a run dir on object storage gets its run.log (a local file until now)
    except (SpecError, InputError, StorageError, NotShared) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except LeaseHeld as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    print(table(manifest["cost"]))  # per stage rows, tokens, seconds, GPU-s, money; per SFT row / pair
    if manifest.get("stopped"):
        print(f"stopped: {manifest['stopped']}", file=sys.stderr)
        return 3
    return 0
