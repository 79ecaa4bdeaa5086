"""A Constraint (base.py) in each engine's own terms, and the root-object wrapping some servers need.

    llguidance_grammar(c)        -> grammar text for llguidance.LLMatcher (the transformers engine)
    vllm_structured_outputs(c)   -> vllm.sampling_params.StructuredOutputsParams (the vllm engine)
    openai_attempts(c, is_vllm)  -> request-body variants to try in order (the openai engine)
    wrap_schema(schema)          -> (object schema, key) for servers that want an object at the root
    unwrap(text, key)            -> the inner value of a wrapped reply, as text

Why llguidance for transformers (measured on the embedded SmolLM2 tokenizer, 2 busy cores, a
{tag, explanation} list schema): llguidance builds its tokenizer in 0.5 s once, compiles the schema
in 3 ms and masks in ~0.3 ms per token per row; xgrammar's compiler takes 0.2 s, the schema 1.4 s,
then ~0.1 ms per token. Both are far under a decode step (~40 ms per token on this CPU). The choice is
the install: llguidance is one 8 MB wheel with no dependencies; xgrammar requires triton on Linux
x86_64 (999 MB installed), which the CPU run install otherwise never needs. vLLM keeps its own
backend choice (xgrammar by default, llguidance as "guidance").

JSON is generated compact and deterministic (", " and ": " separators, no other whitespace): a small
model given free whitespace can spend its whole budget on newlines inside a valid prefix.
"""

from __future__ import annotations

import json

from .base import Constraint

ITEM_SEPARATOR = ", "
KEY_SEPARATOR = ": "


def wrap_schema(schema: dict) -> tuple[dict, str | None]:
    """An object-rooted schema for servers that accept only an object at the root (OpenAI strict mode).
    Returns (schema, None) when the root is already an object, else ({"type": "object", "properties":
    {key: schema}, ...}, key) with key "items" for a list root and "value" for anything else."""
    if schema.get("type") == "object":
        return schema, None
    key = "items" if schema.get("type") == "array" else "value"
    wrapped = {
        "type": "object",
        "properties": {key: schema},
        "required": [key],
        "additionalProperties": False,
    }
    return wrapped, key


def unwrap(text: str, key: str | None) -> str | None:
    """The inner value of a reply to a wrapped schema, as text (a string value as is, anything else
    as compact JSON); None when the reply is not the wrapped object (cut off, or not JSON)."""
    if key is None:
        return text
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or key not in obj:
        return None
    value = obj[key]
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(ITEM_SEPARATOR, KEY_SEPARATOR))


def constraint_schema(c: Constraint) -> dict:
    """A JSON schema that says what c says (for servers whose only lever is a JSON schema)."""
    if c.kind == "json":
        return c.schema
    if c.kind == "choice":
        return {"type": "string", "enum": list(c.choices)}
    return {"type": "string", "pattern": _anchored(c.pattern)}


def _anchored(pattern: str) -> str:
    # JSON-schema patterns search; a Constraint regex must match the whole text
    p = pattern if pattern.startswith("^") else "^(?:" + pattern + ")"
    return p if p.endswith("$") else p + "$"


# -- transformers (llguidance) -----------------------------------------------------------------------


def llguidance_grammar(c: Constraint) -> str:
    """The llguidance grammar text for c (compiled against a tokenizer by LLMatcher)."""
    from llguidance import LLMatcher

    if c.kind == "json":
        options = {
            "whitespace_flexible": False,
            "item_separator": ITEM_SEPARATOR,
            "key_separator": KEY_SEPARATOR,
        }
        return LLMatcher.grammar_from_json_schema(c.schema_json, overrides=options)
    if c.kind == "choice":
        if not c.choices:
            raise ValueError("a choice constraint needs at least one option")
        return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(x) for x in c.choices))
    return LLMatcher.grammar_from_regex(c.pattern)


# -- vLLM in-process ---------------------------------------------------------------------------------


def vllm_structured_outputs(c: Constraint):
    """vllm.sampling_params.StructuredOutputsParams for c (vllm 0.32 cpu / 0.33: json=, choice=, regex=)."""
    from vllm.sampling_params import StructuredOutputsParams

    if c.kind == "json":
        return StructuredOutputsParams(json=c.schema)  # compactness: VLLMEngine's structured_outputs_config
    if c.kind == "choice":
        return StructuredOutputsParams(choice=list(c.choices))
    return StructuredOutputsParams(regex=c.pattern)


# -- OpenAI-compatible servers -----------------------------------------------------------------------


def response_format(schema: dict, name: str = "output") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def openai_attempts(c: Constraint, server_is_vllm: bool) -> list[tuple[str, dict, str | None]]:
    """Request-body additions to try in order, each (label, body fields, key to unwrap or None).

    vLLM servers take any JSON schema root in `response_format`, and a choice or regex natively in
    the `structured_outputs` body field (vllm >= 0.11; older ones read `guided_choice` /
    `guided_regex`). Other servers get a JSON schema only, wrapped in an object when its root is not
    one (OpenAI strict mode wants an object root); a choice or regex becomes a string schema
    (enum / pattern), wrapped, and the reply is unwrapped back to the bare string. The caller moves to
    the next attempt when the server answers 400, and to free text after the last."""
    attempts: list[tuple[str, dict, str | None]] = []
    if server_is_vllm:
        if c.kind == "json":
            attempts.append(("response_format", {"response_format": response_format(c.schema)}, None))
        elif c.kind == "choice":
            attempts.append(("structured_outputs", {"structured_outputs": {"choice": list(c.choices)}}, None))
            attempts.append(("guided_choice", {"guided_choice": list(c.choices)}, None))
        else:
            attempts.append(("structured_outputs", {"structured_outputs": {"regex": c.pattern}}, None))
            attempts.append(("guided_regex", {"guided_regex": c.pattern}, None))
    wrapped, key = wrap_schema(constraint_schema(c))
    label = "response_format" if key is None else f"response_format(wrapped:{key})"
    last = (label, {"response_format": response_format(wrapped)}, key)
    if last not in attempts:  # a vLLM server already got this exact body for an object-rooted schema
        attempts.append(last)
    return attempts
