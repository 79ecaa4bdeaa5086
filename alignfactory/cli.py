"""`alignfactory run SPEC [--set k=v ...] [--limit N] [--output DIR] [--model M] [--backend B]`."""

from __future__ import annotations

import argparse
import logging
import sys

from alignfactory.io import InputError
from alignfactory.spec import SpecError, load_spec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignfactory", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a pipeline spec (resumes a finished or interrupted run)")
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
    r.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    from alignfactory.run import Runner

    try:
        spec = load_spec(
            args.spec, args.sets, limit=args.limit, output=args.output, model=args.model, backend=args.backend
        )
        manifest = Runner(spec, args.spec, args.output).run()
    except (SpecError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for stage in manifest["stages"]:
        print(
            f"{stage['dir']:>24}  in={stage.get('rows_in', 0):>6}  out={stage.get('rows_out', 0):>6}  "
            f"rejected={stage.get('rejected', 0):>5}  tokens_out={stage.get('tokens_out', 0)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
