"""GPU tests: skipped unless CUDA and vllm are importable (run them on a GPU machine)."""

import importlib.util

import pytest


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


NEEDS_CUDA_AND_VLLM = [
    pytest.mark.gpu,
    pytest.mark.vllm,
    pytest.mark.skipif(not _cuda(), reason="needs CUDA"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm"),
]
