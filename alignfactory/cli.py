"""`alignfactory run SPEC [--set k=v ...] [--limit N] [--output DIR] [--model M] [--backend B]`
`alignfactory train {sft,dpo,reward,online-dpo} --config YAML [--data FILE|RUN_DIR] [--workers K --gpus-per-worker G]`
`alignfactory train link-model`            runs/models/smollm2-135m-instruct -> the embedded model
`alignfactory eval CHECKPOINT... --on RUN_DIR [--before MODEL] [--reward-model DIR]`
`alignfactory ablate SPEC [--eval FILE] [--output DIR] [--workers N] [--limit N] [--set K=V]`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from alignfactory.io import InputError
from alignfactory.run.command import add_arguments as add_run_arguments
from alignfactory.run.command import run as run_main
from alignfactory.spec import SpecError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignfactory", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a pipeline spec (resumes a finished or interrupted run)")
    add_run_arguments(r)
    t = sub.add_parser(
        "train",
        help="train on a run's output with TRL (extra --key value args override the YAML, as with trl)",
        allow_abbrev=False,  # the overrides pass through whole: --n 4 is online DPO's n, not --name
    )
    t.add_argument("step", choices=["sft", "dpo", "reward", "online-dpo", "link-model"])
    t.add_argument("--config", help="pipelines/train_<step>.yaml (the file `trl <step> --config` reads)")
    t.add_argument("--data", action="append", help="JSONL file or run dir replacing the config's datasets")
    t.add_argument("--workers", type=int, default=0, help="Ray Train workers (0 = this process)")
    t.add_argument("--gpus-per-worker", type=float, default=0)
    t.add_argument("--cpus-per-worker", type=float, default=1)
    t.add_argument(
        "--storage-path", default="runs/ray_train", help="Ray Train checkpoints (shared by all nodes)"
    )
    t.add_argument("--name", help="Ray Train run name (same name + storage path = resume)")
    t.add_argument("-q", "--quiet", action="store_true")
    e = sub.add_parser("eval", help="before/after evaluation of checkpoints on a run's held-out rows")
    e.add_argument("checkpoints", nargs="+")
    e.add_argument("--on", required=True, dest="run_dir", help="run directory (runs/<name>)")
    e.add_argument("--before", default="runs/models/smollm2-135m-instruct", help="baseline model ('' = none)")
    e.add_argument("--reward-model", help="a `trl reward` checkpoint: adds reward_mean")
    e.add_argument("--limit", type=int, default=64, help="held-out prompts evaluated")
    e.add_argument("--max-new-tokens", type=int, default=256)
    e.add_argument("--allow-unsafe", action="store_true", help="run code without the sandbox's isolation")
    e.add_argument("-q", "--quiet", action="store_true")
    a = sub.add_parser(
        "ablate", help="train arms on data variants, evaluate, compare (pipelines/ablate_*.yaml)"
    )
    a.add_argument("spec", help="pipelines/ablate_<name>.yaml")
    a.add_argument(
        "--eval",
        dest="eval_file",
        help="JSONL eval items (question/answer, prompt+tests, prompt+verifier, prompt+chosen+rejected)",
    )
    a.add_argument(
        "--output", help="ablation directory (default runs/<name>); re-running re-uses what finished"
    )
    a.add_argument(
        "--workers", type=int, default=0, help="arms' jobs as Ray tasks, N at a time (0 = here, in turn)"
    )
    a.add_argument("--limit", type=int, help="evaluate only the first N eval items")
    a.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE")
    a.add_argument("-q", "--quiet", action="store_true")
    rp = sub.add_parser(
        "report",
        help="write RUN_DIR/report.html (plots of a run, linked from its README.md; an ablation dir: its charts)",
    )
    rp.add_argument("run_dir")
    return p


def online_overrides(extra: list[str]) -> dict:
    """--key value pairs -> {key: YAML value} (dots nest: --scorer.kind math)."""
    import yaml

    out: dict = {}
    it = iter(extra)
    for key in it:
        if not key.startswith("--"):
            raise SystemExit(f"error: expected --key value, got {key!r}")
        value = yaml.safe_load(next(it, "true"))
        *path, last = key[2:].replace("-", "_").split(".")
        d = out
        for p in path:
            d = d.setdefault(p, {})
        d[last] = value
    return out


def train_main(args, extra: list[str]) -> int:
    from alignfactory.train import common

    if args.step == "link-model":
        print(common.link_embedded_model())
        return 0
    if not args.config:
        print("error: --config is required", file=sys.stderr)
        return 2
    step = args.step
    try:
        if args.workers:
            from alignfactory.train.ray_launcher import launch

            online = online_overrides(extra) if step == "online-dpo" else {}
            result = launch(
                step,
                args.config,
                [] if online else extra,
                args.data,
                online,
                args.workers,
                args.gpus_per_worker,
                args.cpus_per_worker,
                args.storage_path,
                args.name,
            )
        elif step == "online-dpo":
            from alignfactory.train import online_dpo

            result = online_dpo.train(args.config, online_overrides(extra))
            result = {
                "output_dir": result["output_dir"],
                "last": result["log"][-1] if result["log"] else None,
            }
        else:
            result = common.train(step, args.config, extra, args.data)
            result.pop("log_history")
    except (common.ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))  # one line, last on stdout (TRL prints its logs before it)
    return 0


def eval_main(args) -> int:
    from alignfactory.train.evaluate import evaluate

    try:
        _, table = evaluate(
            args.checkpoints,
            args.run_dir,
            args.before or None,
            args.reward_model,
            args.limit,
            args.max_new_tokens,
            args.allow_unsafe,
        )
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    return 0


def ablate_main(args) -> int:
    from alignfactory.ablate import runner, spec

    try:
        result = runner.run(
            spec.load(args.spec, args.sets),
            args.spec,
            eval_file=args.eval_file,
            output=args.output,
            workers=args.workers,
            limit=args.limit,
        )
    except runner.LeakError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (SpecError, InputError, runner.AblateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result["table"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    if extra and args.command != "train":
        parser().error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "report":
        if os.path.isfile(os.path.join(args.run_dir, "ablation.json")):  # an ablation dir
            from alignfactory.ablate.report import write

            print(write(args.run_dir))
            return 0
        from alignfactory.report import main as report_main

        return report_main([args.run_dir])
    if args.command == "run":  # its console (progress lines, run.log) is its own: alignfactory/run/command.py
        return run_main(args)
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, handlers=[handler])
    if args.command == "train":
        return train_main(args, extra)
    if args.command == "eval":
        return eval_main(args)
    return ablate_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
