"""How often the embedded model ends a reply by itself within a token budget: the number that sizes
the shipped specs' max_tokens (a reply cut at max_tokens is never training data, so a budget below the
model's natural length rejects most rows; one above it costs only the tokens actually written).

    python bench/stop_rate.py [--prompts 24] [--max-tokens 384] [--system TEXT] [--stop-loops 16]

One generation per seed instruction (pipelines/seeds/sft_seed.jsonl, the main job's input; sampling as
sft_data.yaml: temperature 0.7, top_p 0.95) at a large budget; each reply's length in tokens then gives
the stop rate at every smaller budget (a reply of L tokens that stopped fits any budget >= L). Printed:
stop rate per budget, per language, and the tokens a budget spends per stopped reply. With
--stop-loops N the same prompts and seeds run again with Sampling.stop_loops = N (a reply that
repeats its last N tokens a third time stops there, "repetition"): the ratio of the two times, and
how many replies ended by themselves either way (the loop stop must not cost a single one).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (64, 96, 128, 160, 192, 256, 320, 384, 512)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--stop-loops", type=int, default=0, help="also run with Sampling.stop_loops=N")
    ap.add_argument(
        "--system", default=None, help="a system prompt before each instruction (generate's `system`)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: spinning threads on a busy core collapse)"
    )
    args = ap.parse_args()

    from alignfactory.llm import ModelConfig, Sampling
    from alignfactory.llm.transformers_engine import TransformersEngine
    from alignfactory.stages.assemble.filter import language

    seeds = [json.loads(x) for x in (REPO / "pipelines/seeds/sft_seed.jsonl").read_text().splitlines() if x]
    seeds = seeds[: args.prompts]
    system = [{"role": "system", "content": args.system}] if args.system else []
    convs = [system + [{"role": "user", "content": s["instruction"]}] for s in seeds]
    engine = TransformersEngine(ModelConfig(threads=args.threads), batch_size=args.batch_size)
    sampling = Sampling(n=1, max_tokens=args.max_tokens, temperature=0.7, top_p=0.95, seed=0)
    t0 = time.perf_counter()
    outs = engine.chat(convs, sampling, seeds=list(range(len(convs))))
    seconds = time.perf_counter() - t0
    if args.stop_loops:
        import dataclasses

        t1 = time.perf_counter()
        cut = engine.chat(
            convs, dataclasses.replace(sampling, stop_loops=args.stop_loops), list(range(len(convs)))
        )
        loop_seconds = time.perf_counter() - t1
        stopped = [o.finish_reasons[0] == "stop" for o in outs]
        stopped_l = [o.finish_reasons[0] == "stop" for o in cut]
        reasons = [o.finish_reasons[0] for o in cut]
        print(
            f"stop_loops={args.stop_loops}: {loop_seconds:.1f} s vs {seconds:.1f} s without "
            f"(ratio {loop_seconds / seconds:.2f}); replies that ended by themselves: "
            f"{sum(stopped_l)} with, {sum(stopped)} without; 'repetition': {reasons.count('repetition')}, "
            f"'length': {reasons.count('length')}; completion tokens {sum(o.completion_tokens for o in cut)} "
            f"vs {sum(o.completion_tokens for o in outs)}"
        )
    lengths = []  # (tokens, stopped, language)
    for s, o in zip(seeds, outs, strict=True):
        n = len(engine.tokenizer(o.texts[0], add_special_tokens=False)["input_ids"])
        lengths.append((n, o.finish_reasons[0] == "stop", language(s["instruction"])))
    print(f"system prompt: {args.system!r}")
    print(f"{len(convs)} prompts, one reply each at max_tokens {args.max_tokens}: {seconds:.1f} s")
    print(f"{'budget':>6}  {'stop rate':>9}  {'en':>5}  {'zh':>5}  tokens per stopped reply")
    for b in (x for x in BUDGETS if x <= args.max_tokens):
        fit = [(n, lang) for n, stopped, lang in lengths if stopped and n <= b]
        by = {g: [x for x in lengths if x[2] == g] for g in ("en", "zh")}
        rate = {g: sum(1 for n, st, lg in v if st and n <= b) / len(v) if v else 0 for g, v in by.items()}
        spent = sum(min(n, b) for n, _, _ in lengths)  # a reply longer than b costs b tokens
        per = f"{spent / len(fit):.0f}" if fit else "-"
        print(f"{b:>6}  {len(fit) / len(lengths):>9.0%}  {rate['en']:>5.0%}  {rate['zh']:>5.0%}  {per}")
    stopped = sorted(n for n, st, _ in lengths if st)
    if stopped:
        print(f"stopped replies: median {stopped[len(stopped) // 2]} tokens, max {stopped[-1]}")


if __name__ == "__main__":
    main()
