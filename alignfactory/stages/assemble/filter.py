"""filter: drop rows whose response is empty, incomplete, too short/long, a refusal, or in another
language than its instruction. Each drop is a reject with a reason naming the rule.

Completeness always runs (it replaced the `drop_truncated` switch): the finish reason read is the one
on the final assistant message itself (records.response_finish_reason), so a response that a later
stage replaced (reject_sample, constitution) is judged by its own reason, not by meta.generate's.
"stop" (the model ended it) and "input" (it came with the input) pass; "length" is rejected
`truncated: finish_reason 'length'`, anything else, a missing reason included, `incomplete: ...`."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, model_validator

from alignfactory import records
from alignfactory.stages.base import Stage

REFUSALS = [
    r"\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:'|no)t|am unable|won't)",
    r"\bI can(?:'|no)t (?:help|assist|comply|provide) (?:with )?(?:that|this)",
    r"\bAs an AI(?: language model)?,? I (?:can(?:'|no)t|don't|do not)",
    r"抱歉，?我(?:无法|不能)",
    r"作为一个?(?:人工智能|AI)(?:语言模型)?，?我(?:无法|不能)",
]
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z]")


def incomplete_reason(finish_reason: str | None) -> str | None:
    """None for a whole text ("stop": the model ended it; "input": it came with the input), else the
    reject reason: `truncated: ...` for a text cut at max_tokens, `incomplete: ...` for any other or a
    missing reason (abort, content_filter, nobody recorded one)."""
    if finish_reason in ("stop", records.FROM_INPUT):
        return None
    kind = "truncated" if finish_reason == "length" else "incomplete"
    return f"{kind}: finish_reason {finish_reason!r}"


def language(text: str) -> str:
    """'zh' when CJK characters make up at least 20% of the letters, 'en' for Latin text, else 'other'."""
    cjk, latin = len(CJK.findall(text)), len(LATIN.findall(text))
    if cjk + latin == 0:
        return "other"
    return "zh" if cjk / (cjk + latin / 5) >= 0.2 else "en"  # ~5 Latin letters per CJK char of content


class Filter(Stage):
    class Params(BaseModel, extra="forbid"):
        min_chars: int = Field(1, ge=0)  # response length, characters
        max_chars: int = Field(20000, ge=1)
        min_instruction_chars: int = Field(1, ge=0)
        refusal_patterns: list[str] = REFUSALS
        languages: list[str] | None = None  # e.g. ["en", "zh"]; None = any
        same_language: bool = True  # response language must match the instruction's

        @model_validator(mode="before")
        @classmethod
        def _removed(cls, data):
            if isinstance(data, dict) and "drop_truncated" in data:
                raise ValueError(
                    "drop_truncated was removed: filter always rejects a response whose finish reason is "
                    "not 'stop' or 'input' (LLM stages take on_truncated: reject | retry); delete the key"
                )
            return data

    requires = {"messages": "a conversation ending in an assistant turn"}
    adds = ("reject",)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.refusals = [re.compile(p, re.IGNORECASE) for p in params.refusal_patterns]

    def __call__(self, rows: list[dict]) -> list[dict]:
        for row in rows:
            reason = self.why(row)
            if reason:
                self.reject(row, reason)
        return rows

    def why(self, row: dict) -> str | None:
        p = self.params
        instr, resp = records.instruction(row), records.response(row)
        if resp is None or not resp.strip():
            return "empty_response"
        cut = incomplete_reason(records.response_finish_reason(row))  # the reason of this very text
        if cut:
            return cut
        if len(instr.strip()) < p.min_instruction_chars:
            return f"instruction_too_short: {len(instr.strip())} < {p.min_instruction_chars} chars"
        n = len(resp.strip())
        if n < p.min_chars:
            return f"too_short: {n} < {p.min_chars} chars"
        if n > p.max_chars:
            return f"too_long: {n} > {p.max_chars} chars"
        plain = resp.replace("\u2019", "'")  # models often write I’m / can’t
        for pattern in self.refusals:
            if pattern.search(plain):
                return f"refusal: /{pattern.pattern}/"
        lang_resp = language(resp)
        if p.languages is not None and lang_resp not in p.languages:
            return f"language: {lang_resp} not in {p.languages}"
        lang_instr = language(instr)
        if p.same_language and "other" not in (lang_instr, lang_resp) and lang_instr != lang_resp:
            return f"language_mismatch: instruction {lang_instr}, response {lang_resp}"
        return None
