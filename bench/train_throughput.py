"""Training throughput, measured in one run against its own baseline:

  1. SFT tokens/s with packing (best-fit decreasing, padding-free) vs plain padding, one epoch
     each over the same conversations (same real tokens), same model, same optimizer settings.
  2. Online DPO's per-step time split: generation / scoring / optimization (N samples per prompt).

    python bench/train_throughput.py                   # tiny random llama (SmolLM2 tokenizer), ~2 min
    python bench/train_throughput.py --model embedded  # SmolLM2-135M-Instruct, slow on CPU

Tokens/s counts real (non-pad) tokens: the padded run also computes pad positions, which is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def conversations(n: int, seed: int = 0) -> list[dict]:
    """Real seed instructions with responses of very different lengths (what makes padding costly)."""
    rng = random.Random(seed)
    seeds = [
        json.loads(x)["instruction"]
        for x in (REPO / "pipelines/seeds/sft_seed.jsonl").read_text().splitlines()
    ]
    words = " ".join(seeds).split()
    rows = []
    for i in range(n):
        k = rng.choice([8, 16, 32, 64, 128, 256])  # response length in words
        reply = " ".join(rng.choice(words) for _ in range(k))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": seeds[i % len(seeds)]},
                    {"role": "assistant", "content": reply},
                ]
            }
        )
    return rows


def sft_run(model: str, data: str, out: str, packed: bool) -> dict:
    from alignfactory.train.common import build_trainer, parse, with_data

    over = [
        "--model_name_or_path",
        model,
        "--output_dir",
        out,
        "--max_steps",
        "-1",
        "--num_train_epochs",
        "1",
        "--max_length",
        "1024",
        "--logging_steps",
        "1000",
    ]
    if packed:  # a few long packed sequences per step, no pad positions at all
        over += ["--packing", "true", "--packing_strategy", "bfd", "--per_device_train_batch_size", "2"]
    else:  # rows padded to the longest in the batch
        over += ["--packing", "false", "--per_device_train_batch_size", "8"]
    trainer = build_trainer(
        "sft", with_data(parse("sft", REPO / "pipelines/train_sft_cpu.yaml", over), [data])
    )
    ds = trainer.train_dataset
    tokens = sum(len(x) for x in ds["input_ids"])
    cpu0 = time.process_time()
    res = trainer.train()
    cpu = (
        time.process_time() - cpu0
    )  # CPU seconds of all our threads: steadier than wall time on a shared box
    return {
        "tokens": tokens,
        "seconds": res.metrics["train_runtime"],
        "cpu_seconds": cpu,
        "steps": trainer.state.global_step,
        "tokens_per_s": tokens / res.metrics["train_runtime"],
        "tokens_per_cpu_s": tokens / cpu,
    }


def online_run(model: str, data: str, out: str, n: int, steps: int) -> list[dict]:
    from alignfactory.train.online_dpo import OnlineDPO, load_config

    cfg = load_config(
        REPO / "pipelines/train_online_dpo_cpu.yaml",
        {
            "policy": model,
            "reference": model,
            "prompts": [data],
            "output_dir": out,
            "n": n,
            "steps": steps,
            "prompts_per_step": 2,
            "max_new_tokens": 32,
            # a reward head on the same dir (random head: this measures time, not quality)
            "scorer": {"kind": "reward_model", "reward_model": model},
        },
    )
    return OnlineDPO(cfg, resume=False).train()["log"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | embedded | a model dir")
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--n", type=int, default=4, help="online DPO samples per prompt")
    ap.add_argument("--steps", type=int, default=3, help="online DPO steps")
    a = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    from alignfactory.train.common import link_embedded_model, tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model = {
            "tiny": lambda: str(tiny_llama(t / "tiny")),
            "embedded": lambda: str(link_embedded_model(t / "m")),
        }
        model = model.get(a.model, lambda: a.model)()
        data = t / "sft.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in conversations(a.rows)))
        padded = sft_run(model, str(data), str(t / "pad"), packed=False)
        packed = sft_run(model, str(data), str(t / "pack"), packed=True)
        print(
            f"model: {a.model}   rows: {a.rows}   real tokens: {padded['tokens']} (padded) / {packed['tokens']} (packed)"
        )
        print(f"{'SFT':<28}{'steps':>6}{'wall s':>9}{'CPU s':>9}{'tokens/s':>10}{'tokens/CPU s':>14}")
        for name, r in (("plain padding (batch 8)", padded), ("packing bfd, padding-free", packed)):
            print(
                f"{name:<28}{r['steps']:>6}{r['seconds']:>9.1f}{r['cpu_seconds']:>9.1f}"
                f"{r['tokens_per_s']:>10.0f}{r['tokens_per_cpu_s']:>14.0f}"
            )
        print(
            f"packing / padding: {packed['tokens_per_s'] / padded['tokens_per_s']:.2f}x tokens/s, "
            f"{packed['tokens_per_cpu_s'] / padded['tokens_per_cpu_s']:.2f}x tokens/CPU s\n"
        )
        # online DPO from the (untrained) model itself, scored by a reward head loaded on the same dir
        log = online_run(model, str(data), str(t / "online"), a.n, a.steps)
        keys = ("t_generate_s", "t_score_s", "t_optimize_s")
        total = [sum(r[k] for k in keys) for r in log]
        print(f"online DPO, N={a.n}, 2 prompts/step, 32 new tokens, {a.steps} steps (mean s/step):")
        for k in keys:
            med = statistics.mean(r[k] for r in log)
            print(f"  {k[2:-2]:<10}{med:>8.2f} s  {100 * med / statistics.mean(total):>5.1f}%")
        print(
            f"  {'total':<10}{statistics.mean(total):>8.2f} s   pairs/step {statistics.mean(r['pairs'] for r in log):.1f}"
        )


if __name__ == "__main__":
    main()
