"""evolve: Evol-Instruct (Xu et al. 2023, "WizardLM: Empowering Large Language Models to Follow Complex
Instructions", arXiv:2304.12244) with its elimination step.

Each round, every row's current instruction (its last user turn) is rewritten by one operation drawn
with seeded weights (seed, row id, round): in-depth (add_constraints, deepening, concretizing,
increase_reasoning, complicate_input; rubrics/evolve/in_depth_{en,zh}.jinja) or in-breadth (a new,
rarer instruction of the same domain; in_breadth_{en,zh}.jinja), in the instruction's language. Then
the elimination step, in this order (the first that fires names the reason):

    empty                     the model returned nothing
    truncated                 the rewrite stopped at max_tokens (finish_reason "length"): a prompt
                              cut mid-sentence is not an instruction
    copies_template: <words>  the evolved prompt copies template words ("#Rewritten Prompt#", "given
                              prompt", "#改写后的提示#", ...: params.copy_markers)
    no_information_gain       identical to the instruction it evolved from (after whitespace/case), or
                              an LLM equality check (equal_{en,zh}.jinja) answers "Equal"
    cannot_answer             the model, asked the evolved prompt, refuses (a refusal pattern from
                              stages/assemble/filter.py in a reply under refusal_max_words words) or
                              replies with fewer than min_answer_chars letters/digits

A survivor becomes the row's current instruction for the next round; an eliminated candidate is a
rejected row (child of the input row: lineage.parents = [input id]) with the reason and raw text, and
the next round evolves the last survivor again. Output per input row: the last surviving evolution as
a child row (new id from its messages; lineage {parents: [input id], stage: "evolve", operation,
round, operations}; a trailing assistant turn is dropped, it answered the old instruction), with the
input row itself only when keep_parent is true; the parent is not lost either way, lineage records
it. A row none of whose rounds survived is kept as it was, with meta.evolve.evolved = false. Meta of
earlier stages (tags, ...) is copied to the child and still describes the parent's instruction.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from alignfactory import records
from alignfactory.llm.base import request_seed
from alignfactory.stages.assemble.filter import REFUSALS, language
from alignfactory.stages.base import RUBRICS, LLMStage, render

IN_DEPTH = ("add_constraints", "deepening", "concretizing", "increase_reasoning", "complicate_input")
OPERATIONS = (*IN_DEPTH, "breadth")
COPY_MARKERS = [
    "#the given prompt#",
    "#given prompt#",
    "#rewritten prompt#",
    "#created prompt#",
    "given prompt",
    "rewritten prompt",
    "created prompt",
    "#给定提示#",
    "#改写后的提示#",
    "#新提示#",
    "给定提示",
    "改写后的提示",
]
CONTENT = re.compile(r"[^\W_]")  # letters, digits, CJK characters
SPACE = re.compile(r"\s+")


def equality_verdict(text: str) -> bool | None:
    """True = judged equal, False = not equal, None = no verdict in the reply."""
    t = text.strip().casefold()
    if re.search(r"not\s+equal|unequal|不相同|不相等|不同|不一样", t):
        return False
    if re.search(r"\bequal\b|相同|相等|一样", t):
        return True
    return None


class Evolve(LLMStage):
    class Params(BaseModel, extra="forbid"):
        rounds: int = Field(1, ge=1)  # M
        weights: dict[str, float] = {op: 1.0 for op in OPERATIONS}  # operation -> draw weight
        templates: str = "evolve"  # folder under rubrics/: in_depth_/in_breadth_/equal_{en,zh}.jinja
        keep_parent: bool = False
        equality_check: bool = True  # the LLM "Equal / Not Equal" check
        equality_unclear: str = Field("keep", pattern="^(keep|eliminate)$")  # a reply with no verdict
        answer_check: bool = True
        max_tokens: int | None = Field(None, ge=1)  # evolved prompt; None = the spec's
        temperature: float | None = Field(None, ge=0)
        answer_max_tokens: int = Field(64, ge=1)
        judge_max_tokens: int = Field(8, ge=1)
        min_answer_chars: int = Field(10, ge=0)  # letters/digits/CJK characters in the answer
        refusal_max_words: int = Field(80, ge=1)  # a refusal in a longer reply still answers
        refusal_patterns: list[str] = REFUSALS + [r"\bsorry\b", r"对不起|抱歉"]
        copy_markers: list[str] = COPY_MARKERS

        @field_validator("weights")
        @classmethod
        def known_operations(cls, v):
            unknown = sorted(set(v) - set(OPERATIONS))
            if unknown:
                raise ValueError(f"unknown operations {unknown}; known: {list(OPERATIONS)}")
            if sum(v.values()) <= 0 or min(v.values()) < 0:
                raise ValueError("weights must be >= 0 with a positive sum")
            return v

    requires = {"messages": "a conversation with at least one user turn"}
    adds = ("messages", "lineage", "meta.evolve")

    def __init__(self, params, ctx, engine=None):
        super().__init__(params, ctx, engine)
        p = params
        self.refusals = [re.compile(x, re.IGNORECASE) for x in p.refusal_patterns]
        self.ops = [op for op in OPERATIONS if p.weights.get(op, 0) > 0]
        self.op_weights = [p.weights[op] for op in self.ops]
        override = {"max_tokens": p.max_tokens, "temperature": p.temperature}
        self.evolve_sampling = replace(
            ctx.sampling, n=1, **{k: v for k, v in override.items() if v is not None}
        )
        self.answer_sampling = replace(ctx.sampling, n=1, max_tokens=p.answer_max_tokens)
        self.judge_sampling = replace(ctx.sampling, n=1, max_tokens=p.judge_max_tokens, temperature=0.0)

    @classmethod
    def template_files(cls, params) -> list[Path]:
        names = ("in_depth", "in_breadth", "equal")
        return [RUBRICS / params.templates / f"{n}_{lang}.jinja" for n in names for lang in ("en", "zh")]

    def template(self, kind: str, text: str) -> str:
        return f"{self.params.templates}/{kind}_{'zh' if language(text) == 'zh' else 'en'}.jinja"

    def operation(self, row: dict, round_: int) -> str:
        rng = random.Random(request_seed(self.ctx.seed, f"{self.ctx.name}:{row['id']}:op{round_}"))
        return rng.choices(self.ops, weights=self.op_weights)[0]

    # -- one batch: per round, 1 evolve call, then 1 equality call and 1 answer call for survivors ----

    def __call__(self, rows: list[dict]) -> list[dict]:
        current = [records.instruction(r) for r in rows]
        history: list[list[dict]] = [[] for _ in rows]
        survived: list[dict | None] = [None] * len(rows)  # the last surviving step per row
        rejected: list[dict] = []
        for r in range(1, self.params.rounds + 1):
            steps = self.round(rows, current, r)
            for i, step in enumerate(steps):
                history[i].append({k: step[k] for k in ("round", "operation", "instruction", "status")})
                if step["status"] == "kept":
                    current[i], survived[i] = step["instruction"], step
                else:
                    rejected.append(self.eliminated(rows[i], step))
        out = []
        for row, step, hist in zip(rows, survived, history, strict=True):
            if step is None:
                self.meta(row).update({"evolved": False, "history": hist})
                out.append(row)
                continue
            child = self.child(row, step, hist)
            if self.params.keep_parent:
                self.meta(row).update({"evolved": True, "child": child["id"]})
                out.append(row)
            out.append(child)
        return out + rejected

    def round(self, rows: list[dict], current: list[str], r: int) -> list[dict]:
        """Evolve every row's current instruction once and run the elimination step on the results."""
        ops = [self.operation(row, r) for row in rows]
        convs = []
        for op, text in zip(ops, current, strict=True):
            kind = "in_breadth" if op == "breadth" else "in_depth"
            prompt = render(self.template(kind, text), instruction=text, operation=op).strip()
            convs.append([{"role": "user", "content": prompt}])
        outs = self.complete(convs, rows, self.evolve_sampling, what=f"round{r}")
        steps = []
        for op, text, out in zip(ops, current, outs, strict=True):
            raw = out.texts[0]
            new = raw.strip().strip('"“”').strip()
            step = {"round": r, "operation": op, "instruction": new, "parent": text, "raw": raw}
            cut = bool(new) and out.finish_reasons[:1] == ["length"]
            step["status"] = "truncated: stopped at max_tokens" if cut else self.static_check(text, new)
            steps.append(step)
        if self.params.equality_check:
            self.check(rows, steps, r, "equal")
        if self.params.answer_check:
            self.check(rows, steps, r, "answer")
        return steps

    def static_check(self, parent: str, new: str) -> str:
        if not new:
            return "empty"
        low = new.casefold()
        copied = [m for m in self.params.copy_markers if m.casefold() in low]
        if copied:
            return f"copies_template: {copied[0]!r}"
        if SPACE.sub(" ", low) == SPACE.sub(" ", parent.strip().casefold()):
            return "no_information_gain: identical to its parent"
        return "kept"

    def check(self, rows: list[dict], steps: list[dict], r: int, what: str) -> None:
        """One engine call for the steps still kept: the equality judge or the answerability probe."""
        live = [i for i, s in enumerate(steps) if s["status"] == "kept"]
        if not live:
            return
        if what == "equal":
            convs = [
                self.user(
                    render(
                        self.template("equal", steps[i]["parent"]),
                        first=steps[i]["parent"],
                        second=steps[i]["instruction"],
                    )
                )
                for i in live
            ]
            sampling = self.judge_sampling
        else:
            convs = [self.user(steps[i]["instruction"]) for i in live]
            sampling = self.answer_sampling
        outs = self.complete(convs, [rows[i] for i in live], sampling, what=f"round{r}:{what}")
        for i, out in zip(live, outs, strict=True):
            text = out.texts[0]
            steps[i][what] = text
            steps[i]["status"] = self.judge_equal(text) if what == "equal" else self.judge_answer(text)

    @staticmethod
    def user(text: str) -> list[dict]:
        return [{"role": "user", "content": text.strip()}]

    def judge_equal(self, text: str) -> str:
        verdict = equality_verdict(text)
        if verdict or (verdict is None and self.params.equality_unclear == "eliminate"):
            return f"no_information_gain: equality check said {text.strip()[:40]!r}"
        return "kept"

    def judge_answer(self, text: str) -> str:
        words = len(text.split())
        plain = text.replace("\u2019", "'")
        for pattern in self.refusals:
            if words < self.params.refusal_max_words and pattern.search(plain):
                return f"cannot_answer: refusal /{pattern.pattern}/"
        chars = len(CONTENT.findall(text))
        if chars < self.params.min_answer_chars:
            return f"cannot_answer: reply has {chars} < {self.params.min_answer_chars} letters/digits"
        return "kept"

    # -- rows -----------------------------------------------------------------------------------------

    def messages(self, row: dict, instruction: str) -> list[dict]:
        msgs = records.prompt_messages(row)
        last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        return msgs[:last] + [{"role": "user", "content": instruction}] + msgs[last + 1 :]

    def step_meta(self, step: dict) -> dict:
        keys = ("round", "operation", "raw", "equal", "answer")
        return {k: step[k] for k in keys if k in step} | {"evolved_from": step["parent"]}

    def child(self, row: dict, step: dict, hist: list[dict]) -> dict:
        meta = self.step_meta(step) | {"evolved": True, "history": hist}
        child = records.derive(row, self.ctx.name, self.messages(row, step["instruction"]), meta)
        ops = [h["operation"] for h in hist if h["status"] == "kept"]
        child["lineage"] |= {"operation": step["operation"], "round": step["round"], "operations": ops}
        return child

    def eliminated(self, row: dict, step: dict) -> dict:
        """A rejected candidate: a child of the input row, with the reason and the text behind it."""
        msgs = self.messages(row, step["instruction"] or step["raw"])
        cand = records.derive(row, self.ctx.name, msgs, self.step_meta(step))
        cand["lineage"] |= {"operation": step["operation"], "round": step["round"]}
        reason = step["status"]
        raw = step.get("answer") if reason.startswith("cannot_answer") else None
        raw = step.get("equal") if reason.startswith("no_information_gain: equality") else raw
        return self.reject(cand, f"eliminated: {reason}", raw=raw if raw is not None else step["raw"])
