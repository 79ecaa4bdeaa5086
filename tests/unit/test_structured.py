"""Structured outputs without a real model: schema wrapping, the per-engine forms of a Constraint, the
transformers engine's grammar mask on a random tiny llama (its outputs are noise, so only the grammar
can make them parse), and the OpenAI engine's constraint forms, fallback and finish reasons against a
scripted server."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignfactory.llm.base import Constraint, Sampling
from alignfactory.llm.config import ModelConfig
from alignfactory.llm.openai_engine import OpenAIEngine, RequestRejected
from alignfactory.llm.structured import constraint_schema, openai_attempts, unwrap, wrap_schema

TAGS = {
    "type": "array",
    "minItems": 1,
    "maxItems": 2,
    "items": {
        "type": "object",
        "properties": {
            "tag": {"type": "string", "maxLength": 12},
            "explanation": {"type": "string", "maxLength": 20},
        },
        "required": ["tag", "explanation"],
        "additionalProperties": False,
    },
}


def valid_tags(text: str) -> bool:
    value = json.loads(text)
    return (
        isinstance(value, list)
        and 1 <= len(value) <= 2
        and all(
            set(v) == {"tag", "explanation"} and len(v["tag"]) <= 12 and len(v["explanation"]) <= 20
            for v in value
        )
    )


# ---- wrapping and conversion ------------------------------------------------------------------------


def test_object_root_is_not_wrapped_and_list_root_is():
    obj = {"type": "object", "properties": {"score": {"type": "integer"}}}
    assert wrap_schema(obj) == (obj, None)
    wrapped, key = wrap_schema(TAGS)
    assert key == "items" and wrapped["properties"]["items"] == TAGS
    assert wrapped["required"] == ["items"] and wrapped["additionalProperties"] is False
    assert wrap_schema({"type": "string", "enum": ["A", "B"]})[1] == "value"


def test_unwrap_returns_the_inner_value_or_none_when_cut():
    assert json.loads(unwrap('{"items": [{"tag": "a", "explanation": "b"}]}', "items")) == [
        {"tag": "a", "explanation": "b"}
    ]
    assert unwrap('{"value": "tie"}', "value") == "tie"  # a string comes back bare, not quoted
    assert unwrap('{"items": [{"tag": "a", "expl', "items") is None  # cut at max_tokens
    assert unwrap('{"other": 1}', "items") is None
    assert unwrap("free text", None) == "free text"


def test_choice_and_regex_as_json_schema_for_servers_with_only_response_format():
    assert constraint_schema(Constraint.choice(["A", "B", "tie"])) == {
        "type": "string",
        "enum": ["A", "B", "tie"],
    }
    pattern = constraint_schema(Constraint.regex(r"[1-9]|10"))["pattern"]
    assert re.search(pattern, "10") and not re.search(pattern, "100")  # anchored: whole string


def test_openai_attempts_per_server_kind():
    choice = Constraint.choice(["A", "B", "tie"])
    labels = [a[0] for a in openai_attempts(choice, server_is_vllm=True)]
    assert labels == ["structured_outputs", "guided_choice", "response_format(wrapped:value)"]
    assert openai_attempts(choice, True)[0][1] == {"structured_outputs": {"choice": ["A", "B", "tie"]}}
    # not vLLM: only a JSON schema, object-rooted, strict
    [(label, body, key)] = openai_attempts(Constraint.json(TAGS), server_is_vllm=False)
    assert key == "items" and body["response_format"]["json_schema"]["strict"] is True
    assert body["response_format"]["json_schema"]["schema"]["type"] == "object"
    # vLLM takes a list root as is; the wrapped form stays as the fallback
    first, second = openai_attempts(Constraint.json(TAGS), server_is_vllm=True)
    assert first[2] is None and first[1]["response_format"]["json_schema"]["schema"] == TAGS
    assert second[2] == "items"
    obj = Constraint.json({"type": "object", "properties": {"s": {"type": "integer"}}})
    assert len(openai_attempts(obj, server_is_vllm=True)) == 1  # no duplicate of the same body


def test_constraint_keeps_the_schema_property_order():
    # a grammar writes properties in schema order: "reason" before "score" is a different output
    a = Constraint.json({"type": "object", "properties": {"reason": {}, "score": {}}})
    b = Constraint.json({"type": "object", "properties": {"score": {}, "reason": {}}})
    assert list(a.schema["properties"]) == ["reason", "score"] and a != b


# ---- the transformers engine's grammar mask, on a random tiny llama ---------------------------------


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    from alignfactory.llm.transformers_engine import TransformersEngine
    from alignfactory.train.common import tiny_llama

    path = tiny_llama(tmp_path_factory.mktemp("tiny"))
    return TransformersEngine(ModelConfig(path=str(path), threads=1), batch_size=8)


def conv(text):
    return [{"role": "user", "content": text}]


PROMPTS = [conv("Tag this."), conv("Another instruction, longer than the first one.")]


def test_random_model_writes_only_schema_valid_json(tiny_engine):
    # without the mask a random model writes token soup; with it, every finished sample parses
    for sampling in (Sampling(max_tokens=120, temperature=0), Sampling(n=3, max_tokens=120, temperature=1.0)):
        c = Sampling(**{**sampling.__dict__, "constraint": Constraint.json(TAGS)})
        outs = tiny_engine.chat(PROMPTS, c, seeds=[1, 2])
        for o in outs:
            assert o.constrained and o.unconstrained_why is None
            assert o.finish_reasons == ["stop"] * c.n, o.texts  # the grammar bounds the length
            assert all(valid_tags(t) for t in o.texts), o.texts
    free = tiny_engine.chat(PROMPTS, Sampling(max_tokens=20, temperature=0), seeds=[1, 2])
    assert not free[0].constrained  # nothing asked, nothing claimed


def test_random_model_choice_and_regex(tiny_engine):
    s = Sampling(n=4, max_tokens=10, temperature=1.0, constraint=Constraint.choice(["A", "B", "tie"]))
    for o in tiny_engine.chat(PROMPTS, s, seeds=[3, 4]):
        assert o.constrained and o.finish_reasons == ["stop"] * 4 and set(o.texts) <= {"A", "B", "tie"}
    s = Sampling(n=4, max_tokens=10, temperature=1.0, constraint=Constraint.regex(r"(10|[1-9]) points"))
    for o in tiny_engine.chat(PROMPTS, s, seeds=[5, 6]):
        assert o.finish_reasons == ["stop"] * 4
        assert all(re.fullmatch(r"(10|[1-9]) points", t) for t in o.texts), o.texts


def test_budget_hit_inside_the_grammar_is_length(tiny_engine):
    s = Sampling(max_tokens=4, temperature=0, constraint=Constraint.json(TAGS))
    [o] = tiny_engine.chat(PROMPTS[:1], s, seeds=[1])
    assert o.constrained and o.finish_reasons == ["length"] and not o.complete(0)


def test_constraint_the_library_cannot_compile_gives_free_text_with_the_reason(tiny_engine):
    s = Sampling(max_tokens=5, temperature=0, constraint=Constraint.regex("(unclosed"))
    [o] = tiny_engine.chat(PROMPTS[:1], s, seeds=[1])
    assert not o.constrained and "llguidance" in o.unconstrained_why


# ---- the OpenAI engine against a scripted server -----------------------------------------------------


class ConstraintServer:
    """/v1/models (owned_by `owner`) and /v1/chat/completions. `refuse` names body fields answered
    with 400 (e.g. {"response_format", "structured_outputs"}); `reply` builds the choice content from
    the request body; `finish` is the finish_reason sent (None: the key is left out)."""

    def __init__(self, owner="someone", refuse=(), reply=None, finish="stop", refuse_all=False):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "m", "owned_by": owner}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if refuse_all or any(f in body for f in refuse):
                    self._send(400, {"error": {"message": "unsupported field"}})
                    return
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": (reply or (lambda b: "ok"))(body)},
                }
                if finish is not None:
                    choice["finish_reason"] = finish
                self._send(200, {"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _engine(url):
    return OpenAIEngine(ModelConfig(backend="openai", base_url=url, path="m", max_retries=0))


def test_openai_missing_finish_reason_is_unknown_not_stop():
    # old code: a choice without finish_reason was recorded "stop", so a cut text passed as complete
    with ConstraintServer(finish=None) as srv:
        [o] = _engine(srv.base_url).chat([conv("hi")], Sampling(max_tokens=4))
    assert o.finish_reasons == ["unknown"] and not o.complete(0)


def test_openai_list_schema_is_wrapped_for_non_vllm_servers_and_unwrapped():
    items = [{"tag": "math", "explanation": "sums"}]
    with ConstraintServer(reply=lambda b: json.dumps({"items": items})) as srv:
        [o] = _engine(srv.base_url).chat([conv("tag")], Sampling(constraint=Constraint.json(TAGS)))
    fmt = srv.requests[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["properties"]["items"] == TAGS
    assert o.constrained and json.loads(o.texts[0]) == items


def test_openai_vllm_server_gets_choice_natively():
    with ConstraintServer(owner="vllm", reply=lambda b: b["structured_outputs"]["choice"][2]) as srv:
        [o] = _engine(srv.base_url).chat(
            [conv("judge")], Sampling(constraint=Constraint.choice(["A", "B", "tie"]))
        )
    assert srv.requests[0]["structured_outputs"] == {"choice": ["A", "B", "tie"]}
    assert "response_format" not in srv.requests[0]
    assert o.constrained and o.texts == ["tie"]


def test_openai_older_vllm_falls_back_to_guided_choice():
    with ConstraintServer(owner="vllm", refuse={"structured_outputs"}, reply=lambda b: "A") as srv:
        eng = _engine(srv.base_url)
        s = Sampling(constraint=Constraint.choice(["A", "B", "tie"]))
        [o] = eng.chat([conv("judge")], s)
        eng.chat([conv("again")], s)
    assert [("structured_outputs" in r, "guided_choice" in r) for r in srv.requests] == [
        (True, False),
        (False, True),
        (False, True),  # remembered: the second call goes straight to the form that worked
    ]
    assert o.constrained


def test_openai_server_refusing_every_form_gives_free_text_with_the_reason():
    with ConstraintServer(refuse={"response_format"}, reply=lambda b: "score 7") as srv:
        eng = _engine(srv.base_url)
        s = Sampling(
            constraint=Constraint.json({"type": "object", "properties": {"score": {"type": "integer"}}})
        )
        [o] = eng.chat([conv("rate")], s)
        [o2] = eng.chat([conv("rate again")], s)
    assert not o.constrained and "400" in o.unconstrained_why and o.texts == ["score 7"]
    assert not o2.constrained and o2.unconstrained_why == o.unconstrained_why
    assert len(srv.requests) == 3  # refused, free; then free at once


def test_openai_request_refused_without_constraint_too_is_the_rows_fault():
    with ConstraintServer(refuse_all=True) as srv, pytest.raises(RequestRejected):
        _engine(srv.base_url).chat([conv("x")], Sampling(constraint=Constraint.choice(["A", "B"])))
