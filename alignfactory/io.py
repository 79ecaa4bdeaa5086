"""Readers for the formats users have, atomic writers, and the bad-line quarantine.

read_inputs() yields rows (records.new_row) and rejects ({... "reject": {stage: "read", reason, raw}})
in file order; every input line ends up as exactly one of the two. Errors that concern a whole
file (missing, empty, unreadable) raise InputError naming the file.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from alignfactory import records

MAX_LINE_BYTES = 1 << 20  # a JSONL line over 1 MiB is quarantined, not parsed
RAW_KEEP_CHARS = 4000  # how much of a bad line rejected/ keeps
BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    pass


# ---- mapping user formats to messages ---------------------------------------------------------

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}


def to_messages(obj: dict) -> list[dict]:
    """One user record -> OpenAI chat messages. Raises ValueError with a reason a user can act on."""
    if not isinstance(obj, dict):
        raise ValueError(f"row is a {type(obj).__name__}, expected a JSON object")
    if "messages" in obj:
        return _check_messages(obj["messages"], "messages")
    if "conversations" in obj:  # ShareGPT / Qwen
        convs = obj["conversations"]
        if not isinstance(convs, list):
            raise ValueError("'conversations' is not a list")
        msgs = []
        for i, turn in enumerate(convs):
            if not isinstance(turn, dict) or "value" not in turn:
                raise ValueError(f"conversations[{i}] has no 'value'")
            who = str(turn.get("from", turn.get("role", ""))).lower()
            if who not in SHAREGPT_ROLES:
                raise ValueError(f"conversations[{i}].from={who!r} is not one of {sorted(SHAREGPT_ROLES)}")
            msgs.append({"role": SHAREGPT_ROLES[who], "content": turn["value"]})
        return _check_messages(msgs, "conversations")
    if "instruction" in obj:  # plain / Alpaca
        text = _text(obj["instruction"], "instruction")
        extra = obj.get("input")
        if extra:
            text = f"{text}\n\n{_text(extra, 'input')}"
        return _with_optional_answer(text, obj.get("output"), obj.get("system"))
    if "kind" in obj and "input" in obj and "target" in obj:  # Firefly
        return _with_optional_answer(_text(obj["input"], "input"), obj["target"], None)
    if "prompt" in obj and isinstance(obj["prompt"], str):
        return _with_optional_answer(_text(obj["prompt"], "prompt"), obj.get("response"), None)
    raise ValueError(
        f"no instruction: expected one of 'instruction', 'messages', 'conversations', "
        f"'prompt' or Firefly 'kind/input/target'; got keys {sorted(obj)[:8]}"
    )


def _text(value, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{key}' is a {type(value).__name__}, expected a string")
    if not value.strip():
        raise ValueError(f"'{key}' is empty")
    return value


def _with_optional_answer(prompt: str, answer, system) -> list[dict]:
    msgs = [{"role": "system", "content": _text(system, "system")}] if system else []
    msgs.append({"role": "user", "content": prompt})
    if answer is not None and answer != "":
        msgs.append(records.assistant(_text(answer, "output"), records.FROM_INPUT))
    return msgs


def _check_messages(msgs, key: str) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"'{key}' is empty or not a list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in records.ROLES:
            raise ValueError(f"{key}[{i}] has no valid role (system/user/assistant)")
        msg = {"role": m["role"], "content": _text(m.get("content"), f"{key}[{i}].content")}
        if m["role"] == "assistant":
            msg["finish_reason"] = records.FROM_INPUT  # written by a person or given, not generated
        out.append(msg)
    if not any(m["role"] == "user" for m in out):
        raise ValueError(f"'{key}' has no user turn")
    return out


# ---- reading files -----------------------------------------------------------------------------


def expand_paths(patterns: list[str], base: Path | None = None) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if not p.is_absolute() and base is not None:
            p = base / p
        hits = sorted(glob.glob(str(p))) if glob.has_magic(str(p)) else [str(p)]
        if not hits:
            raise InputError(f"input.path: no file matches {pattern!r}")
        for hit in hits:
            if not Path(hit).exists():
                raise InputError(f"input.path: {hit}: no such file or directory")
            paths.append(Path(hit))
    return paths


def read_inputs(paths: list[Path], max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[dict]:
    for path in paths:
        n = 0
        for item in _read_one(path, max_line_bytes):
            n += 1
            yield item
        if n == 0:
            raise InputError(f"{path}: empty input (no rows)")


def _read_one(path: Path, max_line_bytes: int) -> Iterator[dict]:
    if path.is_dir():
        yield from _read_hf_dir(path)
    elif path.suffix == ".parquet":
        yield from _read_parquet(path)
    elif path.suffix == ".json" and _first_char(path) == "[":
        yield from _read_json_array(path)
    else:
        yield from _read_jsonl(path, max_line_bytes)


def _first_char(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(BOM).lstrip()
    return head[:1].decode("ascii", "replace")


# Keys the format mapping consumes; any other key of an input row is kept in row["seed"]
# (entry_point, tests, verifier, category, ...) for the stages that use it.
FORMAT_KEYS = {
    "instruction",
    "input",
    "output",
    "system",
    "messages",
    "conversations",
    "kind",
    "target",
    "prompt",
    "response",
}


def _row_or_reject(obj, file: str, line: int, raw: str) -> dict:
    source = {"file": file, "line": line}
    try:
        row = records.new_row(to_messages(obj), source)
    except ValueError as e:
        return quarantined(source, f"bad_row: {e}", raw)
    extra = {k: v for k, v in obj.items() if k not in FORMAT_KEYS}
    if extra:
        row["seed"] = json.loads(
            json.dumps(extra, ensure_ascii=False, default=str)
        )  # JSON-safe (parquet dates...)
    return row


def quarantined(source: dict, reason: str, raw: str) -> dict:
    """A read-stage reject: no messages, the raw text kept (truncated) for the user to fix."""
    raw = raw if len(raw) <= RAW_KEEP_CHARS else raw[:RAW_KEEP_CHARS] + f"...[{len(raw)} chars]"
    key = f"{source['file']}:{source['line']}"
    return {
        "id": records.message_id([{"role": "raw", "content": key}]),
        "messages": [],
        "source": source,
        "lineage": {"parents": [], "stage": "read"},
        "meta": {},
        "reject": {"stage": "read", "reason": reason, "raw": raw},
    }


def _read_jsonl(path: Path, max_line_bytes: int) -> Iterator[dict]:
    file = str(path)
    with open(path, "rb") as f:
        line_no = 0
        while True:
            chunk = f.readline(max_line_bytes + 1)
            if not chunk:
                return
            line_no += 1
            if len(chunk) > max_line_bytes and not chunk.endswith(b"\n"):
                size = len(chunk) + _skip_rest_of_line(f)
                yield quarantined(
                    {"file": file, "line": line_no},
                    f"line_too_long: {size} bytes > {max_line_bytes}",
                    chunk[:RAW_KEEP_CHARS].decode("utf-8", "replace"),
                )
                continue
            if not chunk.strip():
                continue  # blank lines carry no row
            if line_no == 1:
                chunk = chunk.removeprefix(BOM)  # Windows/Excel exports start with one
            try:
                text = chunk.decode("utf-8")
            except UnicodeDecodeError as e:
                yield quarantined(
                    {"file": file, "line": line_no},
                    f"not_utf8: byte {e.start}",
                    chunk.decode("utf-8", "replace"),
                )
                continue
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError) as e:  # JSONDecodeError, huge ints, deep nesting
                where = f" at column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
                yield quarantined(
                    {"file": file, "line": line_no}, f"bad_json: {getattr(e, 'msg', e)}{where}", text
                )
                continue
            yield _row_or_reject(obj, file, line_no, text)


def _skip_rest_of_line(f) -> int:
    skipped = 0
    while True:
        chunk = f.readline(1 << 20)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def _read_json_array(path: Path) -> Iterator[dict]:
    try:
        data = json.loads(path.read_text("utf-8-sig"))
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, huge ints, deep nesting
        raise InputError(f"{path}: not a valid JSON array: {e}") from e
    for i, obj in enumerate(data, 1):  # "line" = 1-based element index
        yield _row_or_reject(obj, str(path), i, json.dumps(obj, ensure_ascii=False))


def _read_parquet(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            i += 1
            yield _row_or_reject(obj, str(path), i, json.dumps(obj, ensure_ascii=False, default=str))


def _read_hf_dir(path: Path) -> Iterator[dict]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise InputError(f"{path}: not a `datasets` directory (save_to_disk): {e}") from e
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [("", ds)]
    for split, part in splits:
        file = f"{path}[{split}]" if split else str(path)
        for i, obj in enumerate(part, 1):
            yield _row_or_reject(obj, file, i, json.dumps(obj, ensure_ascii=False, default=str))


# ---- writing -----------------------------------------------------------------------------------


def write_atomic(path, data: bytes, tag: int | str | None = None) -> None:
    """Readers see all of data or the old/no file (storage.write_atomic: a local temp file renamed
    into place, or one whole-object upload). tag names the local temp file (default: this pid); Ray
    workers pass the driver's pid, which names the run session, so the kill tests can pin it."""
    from alignfactory import storage

    storage.write_atomic(path, data, tag)


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_atomic(path, jsonl_bytes(rows))


def read_jsonl(path) -> list[dict]:
    """A JSONL file (local path or storage URL) as a list of objects."""
    from alignfactory.storage import location

    with location(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n").encode("utf-8"))
