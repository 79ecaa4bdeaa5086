"""repurpose: turn source texts into instruction data (the Qwen2 report's data repurposing).

A seed line carries a source text as its instruction (the reader needs one), plus optional fields
kept in row["seed"]: source_kind ("document" | "literary" | "profile"), title, language.

    document / literary: for each level of detail (params.levels) the model writes the instruction
        whose answer is the text (rubrics/repurpose/instruction.<lang>.jinja). One child row per
        level: messages = [user: that instruction, assistant: the original text, verbatim].
    profile: the model writes a role-play dialogue from the character profile (roleplay.<lang>.jinja):
        "User: ... / Character: ..." lines become alternating turns under a system prompt made from
        the profile (roleplay_system.<lang>.jinja). One child row, ending with the character's turn.

    meta.repurpose = {kind, level | turns, raw, finish_reason, failed_raw, failed_why},
    lineage parent = the source row.
    rejects (every level failed; raw kept, the failed replies joined by ---):
        truncated: <what> finish_reason 'length' | incomplete: ... (every failure was a reply that did
        not end by itself) | unparseable_instruction | unparseable_dialogue

Completeness: a written instruction or dialogue that did not end by itself (after the on_truncated
retry at twice the budget) is never used: a cut dialogue's last character turn would be cut too. The
assistant turns carry their finish reason: "input" for a source text put back verbatim, the
dialogue's own ("stop") for role-play turns.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from alignfactory import records
from alignfactory.stages.assemble.filter import incomplete_reason, language
from alignfactory.stages.base import RUBRICS, LLMParams, LLMStage, render
from alignfactory.stages.synthesize.constitution import clean_reply
from alignfactory.stages.verify.code_utils import sampling_with

LEVELS = {
    "brief": {"en": "one short sentence naming only the topic", "zh": "一句简短的话，只点明主题"},
    "moderate": {
        "en": "two or three sentences giving the topic, form and tone",
        "zh": "两三句话，说明主题、体裁和语气",
    },
    "detailed": {
        "en": "a detailed request listing the topic, form, tone, length and the key points the text covers",
        "zh": "详细的要求，列出主题、体裁、语气、篇幅以及文中的要点",
    },
}
INSTRUCTION_LABEL = re.compile(r"^\s*[*_\"“]*\s*(?:instruction|指令)\s*[*_]*\s*[:：]\s*", re.IGNORECASE)
SPEAKER = re.compile(
    r"^\s*[*_]*\s*(user|human|you|character|assistant|用户|角色|助手)\s*[*_]*\s*[:：]\s*(.*)$", re.IGNORECASE
)
USER_NAMES = {"user", "human", "you", "用户"}


def parse_instruction(text: str, source: str) -> str | None:
    """The instruction the model wrote: its labeled line (else the first paragraph), without quotes.
    None when empty, or when it just copies the source text back."""
    body = text.strip()
    m = re.search(r"(?:instruction|指令)\s*[*_]*\s*[:：]", body, re.IGNORECASE)
    if m:
        body = body[m.start() :]
        body = INSTRUCTION_LABEL.sub("", body, count=1)
    body = clean_reply(body.split("\n\n")[0])
    if not body or body.strip() == source.strip() or len(body) > max(400, len(source)):
        return None
    return body


def parse_dialogue(text: str) -> list[dict] | None:
    """'User: ...' / 'Character: ...' lines -> alternating user/assistant turns (consecutive lines of one
    speaker joined), trimmed to end on the character. None unless at least one full exchange remains."""
    turns: list[dict] = []
    for line in text.replace("\r", "").split("\n"):
        m = SPEAKER.match(line)
        if m:
            role = "user" if m.group(1).lower() in USER_NAMES else "assistant"
            content = m.group(2).strip()
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] = f"{turns[-1]['content']}\n{content}".strip()
            else:
                turns.append({"role": role, "content": content})
        elif turns and line.strip():  # a continuation line of the current speaker
            turns[-1]["content"] = f"{turns[-1]['content']}\n{line.strip()}".strip()
    while turns and turns[0]["role"] != "user":
        turns.pop(0)
    while turns and turns[-1]["role"] != "assistant":
        turns.pop()
    if len(turns) < 2 or any(not t["content"] for t in turns):
        return None
    return turns


def labelled(cut: str, what: str) -> str:
    """'truncated: finish_reason ...' -> 'truncated: <what> finish_reason ...'."""
    kind, rest = cut.split(": ", 1)
    return f"{kind}: {what} {rest}"


class Repurpose(LLMStage):
    class Params(LLMParams):
        levels: list[Literal["brief", "moderate", "detailed"]] = Field(["brief", "detailed"], min_length=1)
        default_kind: Literal["document", "literary", "profile"] = "document"  # when the seed line has none
        turns: int = Field(3, ge=1)  # role-play exchanges asked for
        language: Literal["auto", "en", "zh"] = "auto"
        max_tokens: int | None = Field(None, ge=1)

    requires = {"messages": "a user turn holding the source text (seed fields: source_kind, title)"}
    adds = ("messages", "lineage", "meta.repurpose")

    @classmethod
    def template_files(cls, params):
        names = ("instruction", "roleplay", "roleplay_system")
        return [RUBRICS / "repurpose" / f"{n}.{lang}.jinja" for n in names for lang in ("en", "zh")]

    def source(self, row: dict) -> dict:
        seed = row.get("seed") or {}
        text = records.instruction(row)
        lang = (
            self.params.language if self.params.language != "auto" else seed.get("language") or language(text)
        )
        kind = seed.get("source_kind") or self.params.default_kind
        return {
            "text": text,
            "title": seed.get("title"),
            "lang": "zh" if lang == "zh" else "en",
            "kind": kind,
        }

    def __call__(self, rows: list[dict]) -> list[dict]:
        sampling = sampling_with(self.ctx.sampling, n=1, max_tokens=self.params.max_tokens)
        srcs = [self.source(r) for r in rows]
        texts_rows = [(r, s) for r, s in zip(rows, srcs, strict=True) if s["kind"] != "profile"]
        profiles = [(r, s) for r, s in zip(rows, srcs, strict=True) if s["kind"] == "profile"]
        made: dict[int, list[dict]] = {id(r): [] for r in rows}
        failed: dict[int, list[tuple[str, str]]] = {id(r): [] for r in rows}  # (why, raw) per failure
        for level in self.params.levels:
            convs = [self.instruction_prompt(s, level) for _, s in texts_rows]
            outs = self.complete(convs, [r for r, _ in texts_rows], sampling, what=level) if convs else []
            for (r, s), out in zip(texts_rows, outs, strict=True):
                raw = out.texts[0]
                cut = incomplete_reason(out.finish_reason(0))
                instr = None if cut else parse_instruction(raw, s["text"])
                if instr is None:
                    failed[id(r)].append(
                        (labelled(cut, f"{level} instruction") if cut else "unparseable", raw)
                    )
                    continue
                # the answer is the source text itself, verbatim: it came with the input
                msgs = [{"role": "user", "content": instr}, records.assistant(s["text"], records.FROM_INPUT)]
                meta = {"kind": s["kind"], "level": level, "raw": raw, "finish_reason": out.finish_reason(0)}
                made[id(r)].append(records.derive(r, self.ctx.name, msgs, meta))
        convs = [self.roleplay_prompt(s) for _, s in profiles]
        outs = self.complete(convs, [r for r, _ in profiles], sampling, what="roleplay") if convs else []
        for (r, s), out in zip(profiles, outs, strict=True):
            raw = out.texts[0]
            cut = incomplete_reason(out.finish_reason(0))
            turns = None if cut else parse_dialogue(raw)
            if turns is None:
                failed[id(r)].append((labelled(cut, "dialogue") if cut else "unparseable", raw))
                continue
            system = render(f"repurpose/roleplay_system.{s['lang']}.jinja", text=s["text"]).strip()
            # every character turn came out of the one reply: each carries that reply's finish reason
            turns = [
                records.assistant(t["content"], out.finish_reason(0)) if t["role"] == "assistant" else t
                for t in turns
            ]
            msgs = [{"role": "system", "content": system}] + turns
            meta = {
                "kind": "profile",
                "turns": len(turns) // 2,
                "raw": raw,
                "finish_reason": out.finish_reason(0),
            }
            made[id(r)].append(records.derive(r, self.ctx.name, msgs, meta))
        result = []
        for r, s in zip(rows, srcs, strict=True):
            fails = failed[id(r)]
            if made[id(r)]:
                for child in made[id(r)]:  # levels that failed for this source stay visible
                    child["meta"][self.ctx.name]["failed_raw"] = [raw for _, raw in fails]
                    child["meta"][self.ctx.name]["failed_why"] = [why for why, _ in fails]
                result += made[id(r)]
            else:
                what = "dialogue" if s["kind"] == "profile" else "instruction"
                cuts = [why for why, _ in fails if why != "unparseable"]
                reason = cuts[0] if cuts and len(cuts) == len(fails) else f"unparseable_{what}"
                self.meta(r)["failed_why"] = [w for w, _ in fails]
                result.append(self.reject(r, reason, raw="\n---\n".join(raw for _, raw in fails)))
        return result

    def instruction_prompt(self, src: dict, level: str) -> list[dict]:
        text = render(
            f"repurpose/instruction.{src['lang']}.jinja",
            text=src["text"],
            title=src["title"],
            detail=LEVELS[level][src["lang"]],
        )
        return [{"role": "user", "content": text}]

    def roleplay_prompt(self, src: dict) -> list[dict]:
        text = render(
            f"repurpose/roleplay.{src['lang']}.jinja",
            text=src["text"],
            title=src["title"],
            turns=self.params.turns,
        )
        return [{"role": "user", "content": text}]
