"""The OpenAI-compatible HTTP backend: `vllm serve`, TGI, SGLang, a hosted API. httpx, no openai package.

    engine = OpenAIEngine(ModelConfig(backend="openai", base_url="http://127.0.0.1:8000/v1", path="served-name"))

One POST {base_url}/chat/completions per conversation, at most cfg.max_concurrency in flight (a
thread pool; results are put back in input order). `n` and `seed` are passed through; a server that
answers fewer than n choices gets the missing samples as separate n=1 requests with derived seeds
(and is then asked one sample at a time). Token counts come from `usage`.

Output constraints (sampling.constraint): a JSON schema goes in `response_format` ({"type":
"json_schema", "json_schema": {"name", "schema", "strict": true}}); a choice or a regex goes in vLLM's
`structured_outputs` body field when the server is vLLM (its /models says owned_by "vllm"), else as a
string schema (enum / pattern). A root that is not an object is wrapped in {"items" | "value": ...}
for servers other than vLLM (OpenAI strict mode wants an object) and the reply unwrapped back (see
structured.py). When the server answers 400 to every form, the request is sent again without one and
the completion says so (constrained False, unconstrained_why quoting the server); that outcome is
remembered per constraint, so later requests go straight to free text. A choice without a
finish_reason gets "unknown", which is not complete (base.is_complete): silence is not a stop.
More than 4 stop strings: the first 4 go to the server (the API's limit), the rest cut the reply here.

Failures: 429, 5xx and transport errors (refused, reset, timeout) are retried cfg.max_retries times
with exponential backoff and full jitter (honouring Retry-After on 429). 401/403 are not retried and
say which env var holds the key; 404/405 (wrong URL or model) raise EndpointError; other 4xx are the
row's fault (RequestRejected). All quote the server's message.
"""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from .base import Completion, EngineError, Sampling, seeds_for
from .config import ModelConfig
from .structured import unwrap
from .transformers_engine import sample_seed, truncate_at_stop

UNKNOWN_FINISH = "unknown"  # a choice without finish_reason: incomplete (base.is_complete is False)


class EndpointError(EngineError):
    """The endpoint failed in a way retries did not (or must not) fix: the run stops, rows stay resumable."""


class AuthError(EndpointError):
    pass


class EndpointConnectError(EndpointError):
    pass


class RequestRejected(ValueError):
    """The server refused this one request (400, 413, 422: e.g. prompt longer than the context). Not
    an EngineError: the pipeline blames the row, not the engine."""


RETRY_STATUS = {408, 409, 425, 429} | set(range(500, 600))
# The OpenAI API (and vllm serve, which validates like it) takes at most 4 stop strings; the rest
# cut the text that came back, excluded like a server-side stop, and make its reason "stop".
SERVER_STOPS = 4


class OpenAIEngine:
    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ):
        if not cfg.base_url:
            raise ValueError("the openai backend needs model.base_url, e.g. http://127.0.0.1:8000/v1")
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/")
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s, connect=min(10.0, cfg.timeout_s)),
            limits=httpx.Limits(max_connections=max(1, cfg.max_concurrency)),
        )
        self._n_supported = True  # cleared when a server answers fewer choices than asked
        self._lock = threading.Lock()
        self._is_vllm: bool | None = None  # learned from /models on the first constrained request
        # Constraint -> index of the body form the server took (structured.openai_attempts), or the
        # reason it took none (str): later requests skip the forms it rejected.
        self._constraint_mode: dict = {}
        self.model_id = cfg.path or self._served_model()
        self.load_seconds = 0.0

    # -- HTTP ------------------------------------------------------------------------------------

    def _request(self, method: str, url: str, payload: dict | None = None) -> dict:
        """One call with retries; returns the JSON body or raises an EndpointError."""
        attempts = self.cfg.max_retries + 1
        last = ""
        for attempt in range(attempts):
            retry_after = None
            try:
                resp = self.client.request(method, url, json=payload)
            except httpx.TransportError as exc:  # refused, reset, DNS, timeout
                last = f"{type(exc).__name__}: {exc}"
                kind = "connect"
            else:
                if resp.status_code < 300:
                    return resp.json()
                body = resp.text[:500]
                if resp.status_code in (401, 403):
                    raise AuthError(
                        f"authentication failed for {self.base_url} (HTTP {resp.status_code}): "
                        f"set ${self.cfg.api_key_env} to a valid key. Server said: {body}"
                    )
                if resp.status_code in (404, 405):  # wrong base_url or model name: every request fails
                    raise EndpointError(f"{method} {url} -> HTTP {resp.status_code}: {body}")
                if resp.status_code not in RETRY_STATUS:
                    raise RequestRejected(f"{method} {url} -> HTTP {resp.status_code}: {body}")
                last = f"HTTP {resp.status_code}: {body}"
                kind = "status"
                retry_after = _retry_after(resp)
            if attempt + 1 < attempts:
                delay = random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self.backoff_max_s))
                time.sleep(delay)
        if kind == "connect":
            raise EndpointConnectError(
                f"cannot connect to {self.base_url} after {attempts} attempts ({last}); "
                "is the server running and model.base_url right?"
            )
        raise EndpointError(f"{method} {url} failed after {attempts} attempts: {last}")

    def _served_model(self) -> str:
        """No model name given: the first model the server lists (vllm serve serves exactly one)."""
        data = self._request("GET", f"{self.base_url}/models").get("data") or []
        if not data:
            raise EndpointError(f"{self.base_url}/models lists no model; set model.path to the served name")
        return data[0]["id"]

    def _server_is_vllm(self) -> bool:
        if self._is_vllm is None:
            try:
                data = self._request("GET", f"{self.base_url}/models").get("data") or []
                self._is_vllm = any(m.get("owned_by") == "vllm" for m in data)
            except (EndpointError, RequestRejected, ValueError):
                self._is_vllm = False
        return self._is_vllm

    def _complete(
        self, messages: list[dict], sampling: Sampling, seed: int, n: int, extra: dict | None = None
    ) -> dict:
        payload = {
            "model": self.model_id,
            "messages": messages,
            "max_tokens": sampling.max_tokens,
            "temperature": max(0.0, sampling.temperature),
            "top_p": sampling.top_p,
            "n": n,
            "seed": int(seed),
        }
        if sampling.stop:
            payload["stop"] = list(sampling.stop)[:SERVER_STOPS]
        payload.update(extra or {})
        return self._request("POST", f"{self.base_url}/chat/completions", payload)

    def _constrained_first(self, messages: list[dict], sampling: Sampling, seed: int, n: int):
        """The first request of a call, in the constraint form this server takes.
        Returns (body, extra body fields used, key to unwrap or None, why unconstrained or None)."""
        from .structured import openai_attempts

        c = sampling.constraint
        if c is None:
            return self._complete(messages, sampling, seed, n), {}, None, None
        attempts = openai_attempts(c, self._server_is_vllm())
        mode = self._constraint_mode.get(c, 0)
        if isinstance(mode, str):  # this server took no form of this constraint before
            return self._complete(messages, sampling, seed, n), {}, None, mode
        refused = []
        for i in range(mode, len(attempts)):
            label, extra, key = attempts[i]
            try:
                body = self._complete(messages, sampling, seed, n, extra)
            except RequestRejected as exc:  # 400/422: this form, or the request itself
                refused.append(f"{label}: {exc}"[:300])
                continue
            with self._lock:
                self._constraint_mode[c] = i
            return body, extra, key, None
        body = self._complete(messages, sampling, seed, n)  # raises if the request itself is refused
        why = "server rejected every constraint form: " + " | ".join(refused)
        with self._lock:
            self._constraint_mode[c] = why
        return body, {}, None, why

    # -- the protocol ----------------------------------------------------------------------------

    def _one(self, messages: list[dict], sampling: Sampling, seed: int) -> Completion:
        n = sampling.n
        bodies = []
        first_n = n if (self._n_supported or n == 1) else 1
        body, extra, key, why = self._constrained_first(messages, sampling, seed, first_n)
        bodies.append(body)
        if first_n == n and len(body.get("choices") or []) < n:
            with self._lock:
                self._n_supported = False
        # samples the server did not give: one request each, seeded like the transformers engine
        have = sum(len(b.get("choices") or []) for b in bodies)
        for j in range(have, n):
            one = dataclasses.replace(sampling, n=1)
            bodies.append(self._complete(messages, one, sample_seed(seed, j), 1, extra))

        texts, reasons = [], []
        prompt_tokens = completion_tokens = 0
        client_stops = tuple(sampling.stop or ())[SERVER_STOPS:]
        for b in bodies:
            for ch in sorted(b.get("choices") or [], key=lambda c: c.get("index", 0)):
                text = (ch.get("message") or {}).get("content") or ""
                inner = unwrap(text, key)  # a wrapped reply back to the bare value; None if cut off
                # no reason given (an aborted stream, a proxy that drops it) is not a stop
                text, reason = text if inner is None else inner, ch.get("finish_reason") or UNKNOWN_FINISH
                text, cut = truncate_at_stop(text, client_stops)
                reason = "stop" if cut else reason
                texts.append(text)
                reasons.append(reason)
            usage = b.get("usage") or {}
            prompt_tokens = prompt_tokens or int(usage.get("prompt_tokens") or 0)
            completion_tokens += int(usage.get("completion_tokens") or 0)
        return Completion(
            texts=texts[:n],
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reasons=reasons[:n],
            constrained=sampling.constraint is not None and why is None,
            unconstrained_why=why,
        )

    def chat(
        self, conversations: list[list[dict]], sampling: Sampling, seeds: list[int] | None = None
    ) -> list[Completion]:
        if not conversations:
            return []
        seeds = seeds_for(conversations, sampling, seeds)
        workers = max(1, min(self.cfg.max_concurrency, len(conversations)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-engine")
        try:
            futures = [
                pool.submit(self._one, c, sampling, s) for c, s in zip(conversations, seeds, strict=True)
            ]
            return [f.result() for f in futures]  # input order; the first failure is raised
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.client.close()


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
