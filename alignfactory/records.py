"""The row every stage reads and writes, and its TRL views.

    {
      "id":       "9f2c...",                      # 16 hex, sha256 of the canonical messages
      "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}],
      "source":   {"file": "seeds.jsonl", "line": 12},
      "lineage":  {"parents": ["<id>", ...], "stage": "generate"},
      "meta":     {"<stage>": {... per-stage detail, raw model text ...}},
      "reject":   null | {"stage": "filter", "reason": "too_short", "raw": "..."},
      "seed":     {...}   # optional: the input row's other keys (entry_point, tests, verifier, ...)
    }

Stages add columns (meta.<stage>, an assistant turn, ...) and never rewrite another stage's meta.
"""

from __future__ import annotations

import copy
import hashlib
import json

ROLES = ("system", "user", "assistant")
FROM_INPUT = "input"  # finish reason of an assistant turn that came with the input (llm.base.FROM_INPUT)


def message_id(messages: list[dict]) -> str:
    canonical = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def new_row(
    messages: list[dict], source: dict, stage: str = "read", parents: list[str] | None = None
) -> dict:
    return {
        "id": message_id(messages),
        "messages": messages,
        "source": source,
        "lineage": {"parents": list(parents or []), "stage": stage},
        "meta": {},
        "reject": None,
    }


def derive(row: dict, stage: str, messages: list[dict], meta: dict | None = None) -> dict:
    """A child row (new content -> new id) that remembers its parent and the stage that made it."""
    child = copy.deepcopy(row)
    child["messages"] = messages
    child["id"] = message_id(messages)
    child["lineage"] = {"parents": [row["id"]], "stage": stage}
    child["reject"] = None
    if meta is not None:
        child["meta"][stage] = meta
    return child


def reject(row: dict, stage: str, reason: str, raw: str | None = None) -> dict:
    row["reject"] = {"stage": stage, "reason": reason}
    if raw is not None:
        row["reject"]["raw"] = raw
    return row


def discarded_candidate(row: dict) -> bool:
    """A rejected row that the rejecting stage made itself from an input row (an eliminated evolution):
    a candidate that did not survive, while the input row it came from goes on (or is rejected) as
    itself. Such rows are kept in rejected/ with their reason, but are not their source line's outcome."""
    rej, lin = row.get("reject"), row.get("lineage") or {}
    return bool(rej) and bool(lin.get("parents")) and lin.get("stage") == rej.get("stage")


def prompt_messages(row: dict) -> list[dict]:
    """The conversation up to (not including) the final assistant turn."""
    msgs = row["messages"]
    return msgs[:-1] if msgs and msgs[-1]["role"] == "assistant" else list(msgs)


def instruction(row: dict) -> str:
    """Text of the last user turn: what taggers, filters and dedup look at."""
    for m in reversed(row["messages"]):
        if m["role"] == "user":
            return m["content"]
    return ""


def response(row: dict) -> str | None:
    msgs = row["messages"]
    return msgs[-1]["content"] if msgs and msgs[-1]["role"] == "assistant" else None


def assistant(text: str, finish_reason: str | None) -> dict:
    """An assistant turn that carries the finish reason of its text, so a later check reads the reason
    of the text actually exported, not of one it replaced. The id (message_id) and the TRL views
    ignore the extra key."""
    return {"role": "assistant", "content": text, "finish_reason": finish_reason}


def with_response(row: dict, text: str, finish_reason: str | None = None) -> list[dict]:
    return prompt_messages(row) + [assistant(text, finish_reason)]


def response_finish_reason(row: dict) -> str | None:
    """The finish reason of the final assistant turn: "stop" (the model ended it), "input" (it came
    with the input), "length"/"abort"/... (incomplete), None (nobody recorded one: incomplete)."""
    msgs = row["messages"]
    if not msgs or msgs[-1]["role"] != "assistant":
        return None
    return msgs[-1].get("finish_reason")


def response_complete(row: dict) -> bool:
    """True when the final assistant text is whole: the model stopped by itself, or it is input text."""
    return response_finish_reason(row) in ("stop", "input")


def to_trl_sft(row: dict) -> dict:
    """TRL conversational language-modeling format."""
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]}


def to_trl_preference(prompt: list[dict], chosen: str, rejected: str) -> dict:
    """TRL conversational preference format (explicit prompt)."""
    return {
        "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }
