"""Pipeline vs direct: the same prompts through the generate stage on Ray Data vs one direct call of
the same engine. Prints Ray start-up and model load separately, then ratio = pipeline / direct
throughput (completion tokens per second), both measured after start-up and model load.

    python bench/pipeline_overhead.py [--prompts 64] [--max-tokens 48]      target: ratio >= 0.85

Greedy decoding, so both sides produce the same tokens. The direct side runs before and after the
pipeline; its mean is the baseline (this machine is noisy).
"""

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prompts(n: int) -> list[str]:
    lines = (REPO / "pipelines/seeds/sft_seed.jsonl").read_text("utf-8").splitlines()
    seeds = [json.loads(line)["instruction"] for line in lines if line.strip()]
    return [seeds[i % len(seeds)] + ("" if i < len(seeds) else f" ({i})") for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, the same on both sides (the "
        "pipeline's default is the actor's num_cpus, 1 in pipelines/sft_data.yaml)",
    )
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ALIGNFACTORY_PROGRESS", "0")
    logging.basicConfig(level=logging.WARNING)

    import ray

    from alignfactory import records
    from alignfactory.llm import make_engine
    from alignfactory.llm.base import Sampling, request_seed
    from alignfactory.llm.config import ModelConfig
    from alignfactory.run import Runner
    from alignfactory.spec import validate

    texts = prompts(args.prompts)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0

    t0 = time.perf_counter()
    engine = make_engine(
        ModelConfig(backend="transformers", threads=args.threads), batch_size=args.batch_size
    )
    direct_load = time.perf_counter() - t0
    sampling = Sampling(max_tokens=args.max_tokens, temperature=0.0)
    convs = [[{"role": "user", "content": t}] for t in texts]
    seeds = [request_seed(0, "generate:" + records.message_id(c)) for c in convs]

    def direct() -> tuple[float, int]:
        t = time.perf_counter()
        outs = [
            o
            for i in range(0, len(convs), 16)
            for o in engine.chat(convs[i : i + 16], sampling, seeds[i : i + 16])
        ]
        return time.perf_counter() - t, sum(o.completion_tokens for o in outs)

    d1_s, d1_tok = direct()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_text(
            "".join(json.dumps({"instruction": t}, ensure_ascii=False) + "\n" for t in texts), "utf-8"
        )
        spec = validate(
            {
                "name": "bench",
                "input": {"path": str(path)},
                "output": f"{tmp}/run",
                "shard_size": 16,
                "model": {"backend": "transformers", "threads": args.threads},
                "seed": 0,
                "sampling": {"max_tokens": args.max_tokens, "temperature": 0.0},
                "stages": [
                    {"name": "generate", "resources": {"batch_size": args.batch_size, "concurrency": 1}}
                ],
            }
        )
        t0 = time.perf_counter()
        manifest = Runner(spec).run()
        wall = time.perf_counter() - t0
    gen = manifest["stages"][1]
    pipe_load = gen["load_seconds"]
    pipe_s, pipe_tok = wall - pipe_load, gen["tokens_out"]

    d2_s, d2_tok = direct()
    direct_rate = (d1_tok + d2_tok) / (d1_s + d2_s)
    pipe_rate = pipe_tok / pipe_s
    print(
        f"ray_start_s={ray_start:.2f} model_load_direct_s={direct_load:.2f} model_load_pipeline_s={pipe_load:.2f}"
    )
    print(f"direct: {d1_tok} tok in {d1_s:.2f} s, {d2_tok} tok in {d2_s:.2f} s -> {direct_rate:.1f} tok/s")
    print(
        f"pipeline: {pipe_tok} tok in {pipe_s:.2f} s (wall {wall:.2f} s less model load) -> {pipe_rate:.1f} tok/s"
    )
    print(
        f"  inside the stage: {gen['seconds']:.2f} s; Ray Data, actor start, shard I/O: {pipe_s - gen['seconds']:.2f} s"
    )
    print(f"ratio={pipe_rate / direct_rate:.3f}  (target >= 0.85)")
    ray.shutdown()


if __name__ == "__main__":
    main()
