"""instag: open-set intent tags for each instruction, InsTag-style (Lu et al. 2023, "#InsTag: Instruction
Tagging for Analyzing Supervised Fine-tuning of Large Language Models", arXiv:2308.07074).

The model sees the user turn(s) and replies with a JSON list of {"tag", "explanation"}. The prompt is
rubrics/instag/{en,zh}.jinja, picked by the instruction's language, after a few worked examples
(rubrics/instag/examples_{en,zh}.jsonl) given as earlier chat turns.

The shape is asked for as a structured output (tag_schema: 1..schema_max_items objects, tag at most
max_tag_chars, explanation at most explanation_chars characters, so a 135M model ends the list inside
its budget). An engine that enforced it returns JSON: parse "structured", read strictly. One that
could not (Completion.constrained False) returns free text, and parse_tags() tries, in order: the
text as is (fenced blocks first), then with Chinese and full-width punctuation mapped to ASCII,
Python-literal syntax (single quotes), a list left open closed after its last complete object, and
finally "tag": "..." pairs picked out of whatever surrounds them; meta.instag.path says which
("structured" | "free_text: <why the engine did not constrain>").

A reply that did not end by itself (finish reason not "stop", after the on_truncated retry at twice the
budget) is a cut list: recorded as parse "truncated" and rejected, whatever parses out of it; so is a
free-text list left open. A reply with no tags, or one that repeats an example's tags verbatim, is
retried with another seed (what="retry<k>"); after `retries` more tries the row is rejected with the
last raw text.

    row out: meta.instag = {"tags": [{"tag", "explanation"}, ...], "language": "en"|"zh",
                            "parse": "structured"|"json"|"punctuation"|"salvaged", "path": ...,
                            "finish_reason": "stop", "attempts": k, "raw": text}
    rejects: truncated: finish_reason 'length' | truncated: list left open   (raw = the cut reply)
             unparseable: <why> after <k> attempts   (raw = the last reply; meta.instag.raws = every reply)
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from dataclasses import replace
from pathlib import Path

from pydantic import Field

from alignfactory.llm.base import Constraint
from alignfactory.stages.assemble.filter import incomplete_reason, language
from alignfactory.stages.base import RUBRICS, LLMParams, LLMStage, render

FENCED = re.compile(r"```[ \t]*[\w-]*[^\n]*\n(.*?)(?:```|\Z)", re.S)  # an unclosed last fence counts
# Chinese punctuation NFKC leaves alone; full-width ASCII forms (［］｛｝：，＂) go through NFKC.
PUNCT = str.maketrans(
    {"【": "[", "】": "]", "「": '"', "」": '"', "『": '"', "』": '"', "“": '"', "”": '"'}
    | {"‘": "'", "’": "'", "、": ",", "；": ",", "。": "."}
)
TAG_KEYS = ("tag", "name", "label", "intent", "标签", "意图")
EXPLANATION_KEYS = ("explanation", "reason", "description", "解释", "说明", "理由")
KEY = r"""["']?(?:{})["']?\s*:\s*["']([^"'\n]{{1,200}})["']"""
TAG_PAIR = re.compile(KEY.format("|".join(TAG_KEYS)), re.I)
EXPLANATION_PAIR = re.compile(KEY.format("|".join(EXPLANATION_KEYS)), re.I)


class TagParseError(ValueError):
    pass


def ascii_punctuation(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(PUNCT)


def parse_tags(text: str, max_tags: int = 12, max_chars: int = 60) -> tuple[list[dict], str]:
    """A model reply -> ([{"tag", "explanation"}, ...], how it parsed); TagParseError if no tag is found."""
    candidates = [body for body in FENCED.findall(text) if body.strip()] + [text]
    for how, fix in (("json", str), ("punctuation", ascii_punctuation)):
        for cand in candidates:
            tags = _clean(_items(_load(fix(cand))), max_tags, max_chars)
            if tags:
                return tags, how
    fixed = ascii_punctuation(text)
    start, end = fixed.find("["), fixed.rfind("}")
    if 0 <= start < end:  # a list cut off mid-object: close it after the last complete object
        tags = _clean(_items(_load(fixed[start : end + 1] + "]")), max_tags, max_chars)
        if tags:
            return tags, "truncated"
    tags = _clean(_salvage(fixed), max_tags, max_chars)
    if tags:
        return tags, "salvaged"
    raise TagParseError("no JSON list of tags" if "[" not in fixed else "no tag in the JSON")


def left_open(text: str) -> bool:
    """True when the reply opens a list it never closes: what is read from it may miss its end."""
    fixed = ascii_punctuation(text)
    start = fixed.find("[")
    return start >= 0 and fixed.rfind("]") < start


def _load(text: str):
    """The first JSON (or Python-literal) value spanning [...] or {...} in text; None if none parses."""
    for open_, close in (("[", "]"), ("{", "}")):
        start, end = text.find(open_), text.rfind(close)
        if not 0 <= start < end:
            continue
        span = text[start : end + 1]
        for load in (lambda s: json.loads(s, strict=False), ast.literal_eval):
            for cand in (span, f"[{span}]") if open_ == "{" else (span,):  # {..}, {..} without brackets
                try:
                    return load(cand)
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    continue
    return None


def _items(value) -> list[tuple]:
    """Parsed JSON -> [(tag, explanation)] whatever shape the model chose (list of objects or strings,
    one object, {"tags": [...]}, or {tag: explanation})."""
    if isinstance(value, dict):
        for k in ("tags", "标签"):
            if isinstance(value.get(k), list):
                return _items(value[k])
        if any(k in value for k in TAG_KEYS):
            value = [value]
        else:
            return [(k, v) for k, v in value.items() if isinstance(v, str)]
    if not isinstance(value, (list, tuple)):
        return []
    out = []
    for item in value:
        if isinstance(item, str):
            out.append((item, ""))
        elif isinstance(item, dict):
            tag = next((item[k] for k in TAG_KEYS if k in item), None)
            expl = next((item[k] for k in EXPLANATION_KEYS if k in item), "")
            out.append((tag, expl))
    return out


def _salvage(text: str) -> list[tuple]:
    """'"tag": "x"' pairs anywhere in the text, each with the explanation that follows it (if any)."""
    hits = list(TAG_PAIR.finditer(text))
    out = []
    for i, m in enumerate(hits):
        tail = text[m.end() : hits[i + 1].start() if i + 1 < len(hits) else len(text)]
        expl = EXPLANATION_PAIR.search(tail)
        out.append((m.group(1), expl.group(1) if expl else ""))
    return out


def _clean(items: list[tuple], max_tags: int, max_chars: int) -> list[dict]:
    """Strings only, stripped, 1..max_chars long, first of each (case-insensitive), at most max_tags."""
    out, seen = [], set()
    for tag, expl in items:
        if not isinstance(tag, str):
            continue
        tag = tag.strip().strip("#*`'\" ").strip()
        if not tag or len(tag) > max_chars or tag.casefold() in seen:
            continue
        seen.add(tag.casefold())
        out.append({"tag": tag, "explanation": expl.strip() if isinstance(expl, str) else str(expl)})
    return out[:max_tags]


def tag_schema(max_items: int, tag_chars: int, explanation_chars: int) -> dict:
    """JSON schema of a tag list: [{"tag", "explanation"}], 1..max_items objects, bounded strings."""
    item = {
        "type": "object",
        "properties": {
            "tag": {"type": "string", "minLength": 1, "maxLength": tag_chars},
            "explanation": {"type": "string", "maxLength": explanation_chars},
        },
        "required": ["tag", "explanation"],
        "additionalProperties": False,
    }
    return {"type": "array", "items": item, "minItems": 1, "maxItems": max_items}


def parse_structured(text: str, max_tags: int, max_chars: int) -> list[dict]:
    """A constrained reply: strict JSON in the schema's shape (a {"tags": [...]} wrapper is read too)."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise TagParseError(f"constrained reply is not JSON ({e})") from None
    tags = _clean(_items(value), max_tags, max_chars)
    if not tags:
        raise TagParseError("no tag in the JSON")
    return tags


def _read_examples(path: Path, lang: str) -> list[dict]:
    """Worked examples, one {"query", "tags": [{"tag", "explanation"}]} per line; errors name file:line."""
    if not path.is_file():
        raise ValueError(f"instag: params.examples.{lang}: {path} not found")
    shots = []
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        try:
            shot = json.loads(line) if line.strip() else None
            if shot is not None and not (isinstance(shot["query"], str) and isinstance(shot["tags"], list)):
                raise TypeError("query must be a string and tags a list")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: bad example ({type(e).__name__}: {e})") from e
        if shot is not None:
            shots.append(shot)
    return shots


class InsTag(LLMStage):
    class Params(LLMParams):
        templates: dict[str, str] = {"en": "instag/en.jinja", "zh": "instag/zh.jinja"}
        examples: dict[str, str] = {"en": "instag/examples_en.jsonl", "zh": "instag/examples_zh.jsonl"}
        retries: int = Field(2, ge=0)  # extra tries (new seed each) for a reply with no tags
        max_tokens: int | None = Field(96, ge=1)  # overrides sampling.max_tokens; None = the spec's
        temperature: float | None = Field(0.2, ge=0)  # low: the JSON shape matters more than variety
        max_tags: int = Field(12, ge=1)
        max_tag_chars: int = Field(60, ge=1)
        # the structured output's bounds: the worked examples have 2-3 tags, explanations under 25 chars.
        # Measured on the embedded 135M model, constrained, 8 seeds: 3 items -> replies of 33-83 tokens
        # (stop rate 0.38 at 48 tokens, 0.75 at 64, 1.0 at 96), 4 items -> up to 110 tokens.
        schema_max_items: int = Field(3, ge=1)
        explanation_chars: int = Field(40, ge=1)

    requires = {"messages": "a conversation with at least one user turn"}
    adds = ("meta.instag",)

    def __init__(self, params, ctx, engine=None):
        super().__init__(params, ctx, engine)
        if "en" not in params.templates:
            raise ValueError("instag: params.templates needs an 'en' entry (the fallback language)")
        self.shots = {lang: _read_examples(RUBRICS / path, lang) for lang, path in params.examples.items()}
        self.shot_sets = [
            frozenset(t["tag"].casefold() for t in s["tags"]) for v in self.shots.values() for s in v
        ]
        p = params
        self.sampling = replace(
            ctx.sampling,
            n=1,
            constraint=self.constraint(p),
            **{
                k: v
                for k, v in {"max_tokens": p.max_tokens, "temperature": p.temperature}.items()
                if v is not None
            },
        )

    @staticmethod
    def constraint(params) -> Constraint:
        items = min(params.schema_max_items, params.max_tags)
        return Constraint.json(tag_schema(items, params.max_tag_chars, params.explanation_chars))

    @classmethod
    def output_constraints(cls, params) -> list[Constraint]:
        return [cls.constraint(params)]

    @classmethod
    def template_files(cls, params) -> list[Path]:
        return [RUBRICS / t for t in params.templates.values()] + [
            RUBRICS / e for e in params.examples.values()
        ]

    def build_messages(self, row: dict) -> tuple[list[dict], str]:
        """Examples as earlier turns (user: rendered query, assistant: its JSON), then the row's query."""
        query = "\n\n".join(m["content"] for m in row["messages"] if m["role"] == "user")
        lang = language(query)
        lang = lang if lang in self.params.templates else "en"
        template = self.params.templates[lang]
        msgs = []
        for shot in self.shots.get(lang, []):
            msgs.append({"role": "user", "content": render(template, query=shot["query"]).strip()})
            msgs.append({"role": "assistant", "content": json.dumps(shot["tags"], ensure_ascii=False)})
        msgs.append({"role": "user", "content": render(template, query=query).strip()})
        return msgs, lang

    def parse(self, text: str, structured: bool = False) -> tuple[list[dict], str]:
        p = self.params
        if structured:
            tags, how = parse_structured(text, p.max_tags, p.max_tag_chars), "structured"
        else:
            tags, how = parse_tags(text, p.max_tags, p.max_tag_chars)
            how = "truncated" if left_open(text) else how
        if frozenset(t["tag"].casefold() for t in tags) in self.shot_sets:
            raise TagParseError("copied an example's tags")
        return tags, how

    def __call__(self, rows: list[dict]) -> list[dict]:
        built = [self.build_messages(r) for r in rows]
        raws: list[list[str]] = [[] for _ in rows]
        errors: dict[int, str] = {}
        pending = list(range(len(rows)))
        for attempt in range(self.params.retries + 1):
            what = f"retry{attempt}" if attempt else None
            outs = self.complete(
                [built[i][0] for i in pending], [rows[i] for i in pending], self.sampling, what
            )
            still = []
            for i, out in zip(pending, outs, strict=True):
                text = out.texts[0]
                raws[i].append(text)
                path = "structured" if out.constrained else f"free_text: {out.unconstrained_why}"
                meta = {"language": built[i][1], "path": path, "finish_reason": out.finish_reason(0)}
                meta |= {"attempts": attempt + 1, "retried": bool(out.retried)}
                cut = incomplete_reason(out.finish_reason(0))
                if cut:  # a cut list is never a tag list, whatever parses out of it
                    self.meta(rows[i]).update(meta | {"parse": "truncated", "raws": raws[i]})
                    self.reject(rows[i], cut, raw=text)
                    continue
                try:
                    tags, how = self.parse(text, structured=out.constrained)
                except TagParseError as e:
                    errors[i] = str(e)
                    still.append(i)
                    continue
                if how == "truncated":  # free text that stopped with its list still open
                    self.meta(rows[i]).update(meta | {"parse": "truncated", "raws": raws[i]})
                    self.reject(rows[i], "truncated: list left open", raw=text)
                    continue
                self.meta(rows[i]).update(meta | {"tags": tags, "parse": how, "raw": text})
            pending = still
            if not pending:
                break
        for i in pending:
            self.meta(rows[i]).update({"language": built[i][1], "raws": raws[i]})
            self.reject(rows[i], f"unparseable: {errors[i]} after {len(raws[i])} attempts", raw=raws[i][-1])
        return rows
