"""Structured outputs vs free text on the embedded model: readable verdicts and their token cost.

    python bench/structured.py [--prompts 16] [--max-tokens 256] [--threads N]

On the transformers engine (embedded SmolLM2-135M-Instruct, greedy, as the stages' defaults), for the
first P instructions of pipelines/seeds/sft_seed.jsonl:
  judge    pointwise helpfulness verdicts (rubrics/judge/pointwise.*.jinja, the Judge stage's own
           constraint: {"reason": str, "score": int 1-10}) on responses the same model wrote first
           (greedy, 128 tokens); read with the stage's read_score (free text: parse_score)
  instag   tag lists (rubrics/instag/*.jinja with the stage's worked examples, the InsTag stage's
           constraint: a list of {tag, explanation}); constrained read with parse_structured, free
           with parse_tags
each asked twice on the same prompts and budget: with sampling.constraint set, and without.
A verdict is readable when the sample finished ("stop", not cut at max_tokens) and its parser finds a
score 1-10 / at least one tag. Printed per task and mode: readable rate, completion tokens, tokens
per readable verdict, seconds; then the ratios constrained/free.
Targets (issue 15): constrained readable >= 99%, tokens per readable verdict no higher than free.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def instructions(p: int) -> list[str]:
    lines = (REPO / "pipelines/seeds/sft_seed.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line)["instruction"] for line in lines if line.strip()][:p]


def judge_prompts(engine, qs: list[str]) -> tuple[list[list[dict]], object]:
    """Responses from the model itself, then the Judge stage's pointwise prompts about them."""
    from alignfactory.llm.base import Sampling
    from alignfactory.stages.assemble.filter import language
    from alignfactory.stages.base import StageContext, render
    from alignfactory.stages.synthesize.judge import Judge

    params = Judge.Params()
    rubrics = Judge(params, StageContext("judge", 1), engine=object()).rubrics
    outs = engine.chat(
        [[{"role": "user", "content": q}] for q in qs], Sampling(max_tokens=128, temperature=0)
    )
    convs = []
    for q, o in zip(qs, outs, strict=True):
        lang = language(q)
        text = render(
            params.pointwise_template.format(lang=lang),
            criterion="helpfulness",
            rubric=rubrics["helpfulness"][lang],
            instruction=q,
            response=o.texts[0],
        )
        convs.append([{"role": "user", "content": text}])
    [constraint] = Judge.output_constraints(params)
    return convs, constraint


def judge_readable(out) -> bool:
    from alignfactory.stages.synthesize.judge import read_score

    return read_score(out)[0] is not None


def instag_prompts(qs: list[str]) -> tuple[list[list[dict]], object]:
    from alignfactory.stages.base import StageContext
    from alignfactory.stages.curate.instag import InsTag

    stage = InsTag(InsTag.Params(), StageContext("instag", 1, seed=7), engine=object())
    convs = [stage.build_messages({"messages": [{"role": "user", "content": q}]})[0] for q in qs]
    [constraint] = InsTag.output_constraints(stage.params)
    return convs, constraint


def instag_readable(out) -> bool:
    from alignfactory.stages.curate.instag import InsTag, TagParseError, parse_structured, parse_tags

    if not out.complete(0):
        return False
    p = InsTag.Params()
    try:
        if out.constrained:
            return bool(parse_structured(out.texts[0], p.max_tags, p.max_tag_chars))
        return bool(parse_tags(out.texts[0], p.max_tags, p.max_tag_chars)[0])
    except TagParseError:
        return False


def measure(engine, convs, sampling, readable) -> dict:
    t0 = time.perf_counter()
    outs = engine.chat(convs, sampling, seeds=list(range(len(convs))))
    seconds = time.perf_counter() - t0
    ok = [readable(o) for o in outs]
    tokens = sum(o.completion_tokens for o in outs)
    return {
        "readable": sum(ok),
        "n": len(outs),
        "tokens": tokens,
        "tokens_per_readable": tokens / sum(ok) if any(ok) else float("inf"),
        "seconds": seconds,
        "length": sum(o.finish_reason(0) == "length" for o in outs),
        "constrained": all(o.constrained for o in outs),
        "unreadable_examples": [o.texts[0][:160] for o, good in zip(outs, ok, strict=True) if not good][:2],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=256, help="same budget for both modes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    ap.add_argument("--tasks", default="judge,instag", help="comma-separated: judge, instag")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from alignfactory.llm.base import Sampling
    from alignfactory.llm.config import ModelConfig
    from alignfactory.llm.transformers_engine import TransformersEngine

    engine = TransformersEngine(ModelConfig(threads=args.threads or None), batch_size=8)
    qs = instructions(args.prompts)
    base = Sampling(max_tokens=args.max_tokens, temperature=0)
    results = {}
    tasks = {
        "judge": (lambda: judge_prompts(engine, qs), judge_readable),
        "instag": (lambda: instag_prompts(qs), instag_readable),
    }
    for task in args.tasks.split(","):
        build, readable = tasks[task]
        convs, constraint = build()
        for mode, c in (("free", None), ("constrained", constraint)):
            r = measure(engine, convs, dataclasses.replace(base, constraint=c), readable)
            results[f"{task}/{mode}"] = r
            print(
                f"{task:7s} {mode:12s} readable {r['readable']:2d}/{r['n']} ({100 * r['readable'] / r['n']:5.1f}%)"
                f"  tokens {r['tokens']:5d}  per readable {r['tokens_per_readable']:6.1f}"
                f"  cut {r['length']:2d}  {r['seconds']:6.1f} s",
                flush=True,
            )
            for ex in r["unreadable_examples"]:
                print(f"    unreadable: {ex!r}")
        f, c = results[f"{task}/free"], results[f"{task}/constrained"]
        print(
            f"{task:7s} constrained/free: readable rate x{(c['readable'] / max(f['readable'], 1)):.2f}, "
            f"tokens per readable verdict x{c['tokens_per_readable'] / f['tokens_per_readable']:.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
