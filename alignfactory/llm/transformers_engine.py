"""The transformers backend: the embedded CPU default (also runs on one GPU).

    engine = TransformersEngine(ModelConfig())            # embedded SmolLM2-135M-Instruct, fp32 on CPU
    engine.chat([[{"role": "user", "content": "hi"}]], Sampling(n=2, max_tokens=32), seeds=[7])

How per-request seeds work. `generate` has one RNG for the whole batch, so a request's samples would
depend on which other requests share its batch. Instead every sequence in a batch (request i, sample
j) owns a torch.Generator seeded from (seeds[i], j). `_RowSampler`, a LogitsProcessor, applies
temperature and top-p to each row, draws that row's token with that row's generator, and masks every
other token to -inf; generate then runs in greedy mode and picks exactly the drawn token. A row's
output therefore depends only on its prompt, its seed and its own logits. Its logits depend on its
batch only through floating-point noise from padding and batched matmuls (left padding is masked and
position ids follow the mask), so a request gives the same text alone or in any batch, except on the
rare step where that noise flips a near-tie (tests assert equality for greedy and sampling on the
embedded model; exact reproducibility is guaranteed for the same batch composition).

A request's n samples share its prompt: the prompt is encoded once (a prefill of P prompts fills a
KV cache that is repeated n times along the batch; see _generate), so n=8 costs one prompt encoding
and 8 decode rows, not 8 prompt encodings. A call holds batch_size // n requests (at least one).

Output constraints (sampling.constraint: JSON schema, choice, regex) are enforced with llguidance
(see structured.py for why not xgrammar): `_GrammarMask`, a LogitsProcessor placed before
_RowSampler, keeps one matcher per decode row (P*n rows, each with its own state, copied from one
compiled matcher cached per constraint), feeds it the row's previous token and sets every token the
grammar forbids to -inf, so the row sampler (or greedy argmax) draws only allowed tokens. The grammar
allows end-of-text only once the value is complete: a row that ends has finish reason "stop", one cut
by max_tokens "length". A constraint llguidance cannot compile gives free text, constrained False,
with the reason in unconstrained_why.

Shapes: a micro-batch is (P, prompt_len) left-padded token ids, expanded to (P*n, ...) decode rows
(request-major); scores are (P*n, vocab) float32.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from alignfactory.console import no_progress_bars

from .base import Completion, Sampling, seeds_for
from .config import ModelConfig
from .embedded import EMBEDDED_MODEL_ID, embedded_model_dir, gguf_to_hf_dir

log = logging.getLogger(__name__)


def sample_seed(seed: int, sample_index: int) -> int:
    """The generator seed of sample j of a request: mixed, so (s, 1) never equals (s + 1, 0)."""
    if sample_index == 0:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def resolve_model_path(cfg: ModelConfig) -> tuple[str, str]:
    """(what from_pretrained loads, the engine's model_id) for cfg.path."""
    if cfg.path is None:
        return str(embedded_model_dir()), EMBEDDED_MODEL_ID
    p = Path(cfg.path).expanduser()
    if p.suffix == ".gguf":
        return str(gguf_to_hf_dir(p)), str(p)
    if p.is_dir():
        return str(p), cfg.path
    return cfg.path, cfg.path  # a hub id (only on machines that reach a hub)


def torch_threads(cfg: ModelConfig) -> int:
    """cfg.threads; else, inside a Ray worker, the CPUs Ray assigned to it (resources.num_cpus, so
    actors sharing a node don't oversubscribe it: OpenMP threads that spin on a busy core collapse
    throughput); else every core this process may run on."""
    if cfg.threads:
        return cfg.threads
    assigned = _ray_assigned_cpus()
    if assigned:
        return max(1, round(assigned))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _ray_assigned_cpus() -> float | None:
    import sys

    if "ray" not in sys.modules:  # not in a Ray worker; don't import ray just to find out
        return None
    import ray

    if not ray.is_initialized():
        return None
    try:
        if ray.get_runtime_context().worker.mode != ray.WORKER_MODE:  # the driver is not an actor
            return None
        return ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:
        return None


MIN_SHARED_PREFIX = 16  # tokens; below this a separate prefix pass saves less than it costs


def common_prefix_len(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt has in common."""
    first, n = prompts[0], min(len(p) for p in prompts)
    for i in range(n):
        if any(p[i] != first[i] for p in prompts):
            return i
    return n


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string; (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class TransformersEngine:
    def __init__(self, cfg: ModelConfig | None = None, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg = cfg or ModelConfig()
        self.batch_size = max(1, int(batch_size))
        t0 = time.perf_counter()
        self.threads = torch_threads(cfg)
        torch.set_num_threads(self.threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if cfg.dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, cfg.dtype)
        load_from, self.model_id = resolve_model_path(cfg)
        self.tokenizer = AutoTokenizer.from_pretrained(load_from)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{load_from}: the tokenizer has no chat template; use an instruct/chat model")
        with no_progress_bars():  # the bar repeated in every worker's output (ablate's console too)
            self.model = AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype).to(self.device).eval()
        gen_eos = self.model.generation_config.eos_token_id
        eos = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(eos)
        self._ll_tokenizer = None  # llguidance's view of the tokenizer, built on first constraint (~0.5 s)
        self._matchers: dict = {}  # Constraint -> compiled llguidance matcher (rows get deep copies)
        self.load_seconds = time.perf_counter() - t0

    # -- prompts ---------------------------------------------------------------------------------

    def render(self, conversation: list[dict]) -> list[int]:
        """Token ids of the chat-templated prompt, ending with the assistant header."""
        text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        # The template already writes any BOS/special markers as text: add none twice.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- output constraints ----------------------------------------------------------------------

    def compiled(self, constraint):
        """The llguidance matcher for a constraint, compiled once per engine and cached (rows copy it).
        Raises ValueError when llguidance cannot compile it."""
        if constraint in self._matchers:
            return self._matchers[constraint]
        import llguidance
        import llguidance.hf

        from .structured import llguidance_grammar

        if self._ll_tokenizer is None:
            vocab = int(self.model.config.vocab_size)  # logits width; may exceed the tokenizer's size
            self._ll_tokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer, n_vocab=vocab, eos_token=self.eos_ids
            )
        matcher = llguidance.LLMatcher(self._ll_tokenizer, llguidance_grammar(constraint), log_level=0)
        if matcher.is_error():
            raise ValueError(f"llguidance cannot compile {constraint.kind} constraint: {matcher.get_error()}")
        self._matchers[constraint] = matcher
        return matcher

    # -- the protocol ----------------------------------------------------------------------------

    def chat(
        self, conversations: list[list[dict]], sampling: Sampling, seeds: list[int] | None = None
    ) -> list[Completion]:
        seeds = seeds_for(conversations, sampling, seeds)
        if sampling.n < 1:
            raise ValueError("sampling.n must be >= 1")
        prompts = [self.render(c) for c in conversations]
        matcher, why = None, None
        if sampling.constraint is not None:
            try:
                matcher = self.compiled(sampling.constraint)
            except (ValueError, RuntimeError) as exc:
                why = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("output constraint not enforced: %s", why)
        # Decode rows per request: one per sample; greedy samples are identical, so one serves all n.
        k = 1 if sampling.temperature <= 0 else sampling.n
        # Similar lengths together: less padding. Results do not depend on the grouping (see top).
        order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
        per_call = max(1, self.batch_size // k)  # requests per generate call: per_call * k decode rows
        results: dict[int, list[tuple[str, int, str]]] = {}
        for start in range(0, len(order), per_call):
            chunk = order[start : start + per_call]
            outs = self._generate(
                [prompts[i] for i in chunk], [seeds[i] for i in chunk], k, sampling, matcher
            )
            results.update(zip(chunk, outs, strict=True))

        completions = []
        for i, prompt in enumerate(prompts):
            samples = [results[i][min(j, k - 1)] for j in range(sampling.n)]
            completions.append(
                Completion(
                    texts=[s[0] for s in samples],
                    prompt_tokens=len(prompt),
                    completion_tokens=sum(s[1] for s in samples),
                    finish_reasons=[s[2] for s in samples],
                    constrained=matcher is not None,
                    unconstrained_why=why,
                )
            )
        return completions

    def _layout(self, prompts: list[list[int]]):
        """(ids, mask, shared): the prompts as one (P, L) block. Prompts that begin alike (a system
        prompt, few-shot turns: instag's 450 of ~570 tokens) are laid out [shared prefix | padding |
        rest], so the prefix is encoded once for the micro-batch, not P times; otherwise left-padded
        (shared = 0). Padding is masked and position ids follow the mask either way."""
        import torch

        shared = common_prefix_len(prompts) if len(prompts) > 1 else 0
        shared = min(shared, min(len(p) for p in prompts) - 1)  # each row keeps its last token apart
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        rest = self.tokenizer.pad(
            {"input_ids": [p[shared:] for p in prompts]}, padding=True, return_tensors="pt"
        )
        head = torch.tensor([prompts[0][:shared]], dtype=rest["input_ids"].dtype).expand(len(prompts), -1)
        ids = torch.cat([head, rest["input_ids"]], dim=1)
        mask = torch.cat([torch.ones_like(head), rest["attention_mask"]], dim=1)
        return ids.to(self.device), mask.to(self.device), shared

    def _prefill(self, ids, mask, shared: int, k: int):
        """KV cache of every column but the last, (P*k, heads, L-1, dim) request-major: the shared prefix
        from one row, repeated P times, then the rest of the P rows. No logits (logits_to_keep=1: the
        lm_head over every prompt position was a fifth of the prefill's work)."""
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # padding anywhere: positions follow the mask
        cache = None
        if shared:
            cache = self.model(
                input_ids=ids[:1, :shared],
                position_ids=positions[:1, :shared],
                use_cache=True,
                logits_to_keep=1,
            ).past_key_values
            cache.batch_repeat_interleave(ids.shape[0])
        if ids.shape[1] - 1 > shared:
            cache = self.model(
                input_ids=ids[:, shared:-1],
                attention_mask=mask[:, :-1],
                position_ids=positions[:, shared:-1],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).past_key_values
        if k > 1:
            cache.batch_repeat_interleave(k)  # (P, ...) -> (P*k, ...), request-major
        return cache

    def _generate(
        self, prompts: list[list[int]], seeds: list[int], k: int, sampling: Sampling, matcher=None
    ) -> list[list[tuple[str, int, str]]]:
        """One micro-batch of P requests, k samples each -> per request, k (text, completion tokens,
        finish reason).

        Each prompt is encoded once: a forward pass over the P left-padded prompts minus their last
        token fills the KV cache (P, heads, L-1, dim), which is repeated k times along the batch
        (P*k rows, request-major); generate then starts from the cached prefix, feeding only each
        row's last prompt token. Prompt work is P*(L-1) + P*k positions instead of P*k*L.
        """
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        # Each row may generate up to max_model_len - its own prompt length (a per-row cap keeps
        # results independent of the other rows). A prompt that fills the window gets "" / length.
        limits = [max(0, min(sampling.max_tokens, self.cfg.max_model_len - len(p))) for p in prompts]
        for p, lim in zip(prompts, limits, strict=True):
            if lim < sampling.max_tokens:
                log.warning(
                    "prompt of %d tokens leaves %d of max_model_len=%d", len(p), lim, self.cfg.max_model_len
                )
        max_new = max(limits)
        if max_new == 0:
            return [[("", 0, "length")] * k for _ in prompts]
        limits = [lim for lim in limits for _ in range(k)]  # per decode row

        ids, mask, shared = self._layout(prompts)  # (P, L); the first `shared` columns are one prefix
        prompt_len = ids.shape[1]
        processors = LogitsProcessorList()
        grammar = None
        if matcher is not None:  # first: the row sampler must draw from the allowed tokens only
            grammar = _GrammarMask(matcher, len(prompts) * k, self.eos_ids, int(self.model.config.vocab_size))
            processors.append(grammar)
        if sampling.temperature > 0:
            row_seeds = [sample_seed(s, j) for s in seeds for j in range(k)]
            processors.append(_RowSampler(row_seeds, sampling.temperature, sampling.top_p, self.device))
        stopping = StoppingCriteriaList()
        if sampling.stop:
            stopping.append(_StopStrings(self.tokenizer, sampling.stop, prompt_len))
        loops = None
        if sampling.stop_loops:
            loops = _Loops(sampling.stop_loops, prompt_len, self.eos_ids)
            stopping.append(loops)
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=False,  # sampling happens in _RowSampler, one generator per row
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        with torch.inference_mode():
            extra = {}
            if prompt_len > 1:  # prefill everything but each row's last token, once per request
                extra["past_key_values"] = self._prefill(ids, mask, shared, k)
            out = self.model.generate(
                input_ids=ids.repeat_interleave(k, dim=0),
                attention_mask=mask.repeat_interleave(k, dim=0),
                generation_config=gen_cfg,
                logits_processor=processors,
                stopping_criteria=stopping,
                **extra,
            )
        new = out[:, prompt_len:].tolist()

        results = []
        eos = set(self.eos_ids)
        for row_ids, lim in zip(new, limits, strict=True):
            row_ids = row_ids[:lim]
            looped = loops.at.get(len(results)) if loops is not None else None
            if looped is not None and looped <= lim:  # stopped in a loop; the tokens after are padding
                text = self.tokenizer.decode(row_ids[:looped], skip_special_tokens=True)
                results.append((text, looped, "repetition"))
                continue
            end = next((pos for pos, t in enumerate(row_ids) if t in eos), None)
            if end is not None:  # eos counts as a generated token, as vLLM counts it
                text, count, reason = (
                    self.tokenizer.decode(row_ids[:end], skip_special_tokens=True),
                    end + 1,
                    "stop",
                )
            else:
                text, count, reason = (
                    self.tokenizer.decode(row_ids, skip_special_tokens=True),
                    len(row_ids),
                    "length",
                )
            if grammar is not None and grammar.errors[len(results)]:
                reason = "grammar_error"  # the matcher broke (a bug, logged): the text is not trusted
            if sampling.stop:
                text, hit = truncate_at_stop(text, sampling.stop)
                if hit:
                    reason = "stop"
                    # tokens up to the one that completed the stop string
                    count = min(count, _tokens_to_stop(self.tokenizer, row_ids, sampling.stop))
            results.append((text, count, reason))
        return [results[r : r + k] for r in range(0, len(results), k)]


def _tokens_to_stop(tokenizer, ids: list[int], stop: tuple[str, ...]) -> int:
    for k in range(1, len(ids) + 1):
        if truncate_at_stop(tokenizer.decode(ids[:k], skip_special_tokens=True), stop)[1]:
            return k
    return len(ids)


class _RowSampler:
    """LogitsProcessor: per-row temperature + top-p sampling with per-row generators; returns scores
    that are -inf everywhere but the drawn token, so greedy search selects it."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        import torch

        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(s))
            self.generators.append(g)

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # (rows, vocab)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        if self.top_p < 1.0:
            # keep the smallest prefix whose mass reaches top_p (always at least the top token)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
        out = torch.full_like(scores, float("-inf"))
        for r, g in enumerate(self.generators):
            k = torch.multinomial(sorted_p[r], 1, generator=g)
            out[r, order[r, k]] = 0.0
        return out


class _GrammarMask:
    """LogitsProcessor: per-row llguidance matchers; tokens the row's grammar forbids get -inf.

    Row r's matcher is a deep copy of the compiled one; each call after the first feeds it the token
    the row drew last step (input_ids[r, -1]). A row whose matcher has stopped (it consumed
    end-of-text; generate then pads it) or broke gets only the eos tokens allowed, so no row is ever
    all -inf (which would make the row sampler's softmax NaN). Scores: (rows, vocab) float32."""

    def __init__(self, matcher, rows: int, eos_ids: list[int], vocab: int):
        import torch

        self.matchers = [matcher.deep_copy() for _ in range(rows)]
        self.errors = [False] * rows
        self.eos_ids = list(eos_ids)
        self.started = False
        self.bitmask = torch.full((rows, (vocab + 31) // 32), -1, dtype=torch.int32)  # 1 bit per token id

    def __call__(self, input_ids, scores):
        import numpy as np
        import torch

        last = input_ids[:, -1].tolist() if self.started else None
        self.started = True
        free = []  # rows whose grammar no longer decides: only eos allowed
        for r, m in enumerate(self.matchers):
            if (
                last is not None
                and not m.is_stopped()
                and not self.errors[r]
                and not m.consume_token(last[r])
            ):
                self.errors[r] = True
                log.warning("grammar matcher row %d refused token %d: %s", r, last[r], m.get_error())
            if m.is_stopped() or self.errors[r] or m.is_error():
                free.append(r)
            else:
                row = self.bitmask[r]  # llguidance writes the row's mask in place (as llguidance.torch
                m.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * 4)  # does; that module compiles)
        # (rows, words) int32 -> (rows, words*32) bool, bit b of word w = token 32*w + b (little-endian
        # words, so the bytes' little-endian bits are in token order)
        bits = np.unpackbits(self.bitmask.numpy().view(np.uint8), axis=1, bitorder="little")
        allowed = torch.from_numpy(bits[:, : scores.shape[1]]).bool().to(scores.device)
        if allowed.shape[1] < scores.shape[1]:  # logits wider than the grammar's vocab: extra ids banned
            pad = torch.zeros(allowed.shape[0], scores.shape[1] - allowed.shape[1], dtype=torch.bool)
            allowed = torch.cat([allowed, pad.to(scores.device)], dim=1)
        for r in free:
            allowed[r] = False
            allowed[r, self.eos_ids] = True
        return scores.masked_fill(~allowed, float("-inf"))


class _Loops:
    """StoppingCriteria: a row is done once its last `window` generated tokens already occurred twice
    before in its generated text (three copies of one span: a degenerate loop). `at[row]` = tokens
    generated when it fired; the engine reports such a row as finish reason "repetition"."""

    def __init__(self, window: int, prompt_len: int, eos_ids: list[int]):
        self.window = int(window)
        self.prompt_len = prompt_len
        self.eos = set(eos_ids)  # a row that ended (eos, then padding = eos) is not looping
        self.at: dict[int, int] = {}

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        gen = input_ids[:, self.prompt_len :]
        n, w = gen.shape[1], self.window
        done = [False] * gen.shape[0]
        if n >= 3 * w:
            rows = gen.tolist()
            for r, ids in enumerate(rows):
                if r in self.at:
                    done[r] = True
                    continue
                if self.eos.intersection(ids):
                    continue
                tail, first = ids[-w:], ids[-w]
                # earlier copies of the tail (windows that end before it starts)
                copies = sum(1 for i in range(n - 2 * w + 1) if ids[i] == first and ids[i : i + w] == tail)
                if copies >= 2:
                    self.at[r] = n
                    done[r] = True
        return torch.tensor(done, device=input_ids.device)


class _StopStrings:
    """StoppingCriteria: a row is done once its generated text contains a stop string. Decodes only
    the tail (enough tokens to hold the longest stop string plus the last token's text)."""

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_len: int):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.prompt_len = prompt_len
        self.tail = max(len(s) for s in self.stop) + 2  # tokens are >= 1 char, bar special ones

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        gen = input_ids[:, self.prompt_len :]
        tails = self.tokenizer.batch_decode(gen[:, -self.tail :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in tails], device=input_ids.device)
