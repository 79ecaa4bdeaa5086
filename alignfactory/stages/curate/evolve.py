"""evolve: Evol-Instruct (Xu et al. 2023, "WizardLM: Empowering Large Language Models to Follow Complex
Instructions", arXiv:2304.12244) with its elimination step.

Each round, every row's current instruction is rewritten by one operation drawn with seeded weights
(seed, row id, round): in-depth (add_constraints, deepening, concretizing, increase_reasoning,
complicate_input; rubrics/evolve/in_depth_{en,zh}.jinja) or in-breadth (a new, rarer instruction of
the same domain; in_breadth_{en,zh}.jinja), in the instruction's language. Multi-turn rows: evolve
rewrites the last user turn only; earlier turns stay as they were, and meta.evolve says which turn
(rewritten_turn: its index in messages; user_turns: how many there are). Then the elimination step,
in this order (the first that fires names the reason):

    empty                     the model returned nothing
    truncated                 the rewrite did not end by itself (finish reason "length", or any but
                              "stop"): a prompt cut mid-sentence is not an instruction. With
                              on_truncated "retry" (default) it is first asked once more at twice
                              max_tokens (LLMStage.complete); only what is still cut is eliminated
    copies_template: <words>  the evolved prompt copies template words ("#Rewritten Prompt#", "given
                              prompt", "#改写后的提示#", ...: params.copy_markers)
    no_information_gain       identical to the instruction it evolved from or to an earlier one of
                              its chain (after whitespace/case), or the LLM equality check
                              (equal_{en,zh}.jinja) answers "Equal" / "相同"
    unjudged                  the equality reply has no verdict (unreadable, or cut after its retry):
                              eliminated unless equality_unclear is "keep" (a gate that cannot read
                              its input does not pass it)
    cannot_answer             the model, asked the evolved prompt, refuses (a refusal pattern in a
                              complete reply under refusal_max_words words: WizardLM's "sorry" rule)
                              or replies with fewer than min_answer_chars letters/digits
    unprobed                  the probe answer cannot be read: it ended with a reason other than
                              "stop"/"length", or it was cut with fewer than min_answer_chars letters

The equality check asks for its shape (output_constraints: a choice of "Equal" | "Not Equal", or
"相同" | "不相同" for Chinese); an engine that cannot constrain gets the free-text reader
(equality_verdict), and meta.evolve.equal_parse records which path and why.

The answer probe is judged only on a complete reply. A probe answer cut at max_tokens (after its
retry at twice answer_max_tokens) is not judged a refusal from its partial text: it ran past the
probe budget, so it is not a short refusal (the WizardLM rule is "sorry" in a reply under 80 words;
at ~1.3 tokens per English word, a retry budget of 2 x 64 tokens covers it), and it is kept when its
partial text already has min_answer_chars letters; meta.evolve.answer_probe says it was not judged
and why. A long normal answer with "sorry" inside therefore survives whatever the budget.

Every surviving round is its own row (as WizardLM pools the rounds): round k's survivor is a child of
the row it evolved from (lineage {parents: [that row's id], stage: "evolve", operation, round,
operations}; new id from its messages; a trailing assistant turn is dropped, it answered the old
instruction) and the next round evolves it. An eliminated candidate is a rejected row, a child of
the row it evolved from, with the reason and raw text (records.discarded_candidate: not its source
line's outcome), and the next round evolves the last survivor again. Output per input row: its
survivors in round order, with the input row itself when keep_parent is true (meta.evolve.children
names them) or when no round survived (meta.evolve.evolved = false). meta.evolve.origin is the input
row's id. Meta of earlier stages (tags, ...) is copied to the children and still describes the input
row's instruction.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

from pydantic import Field, field_validator

from alignfactory import records
from alignfactory.llm.base import Constraint, request_seed
from alignfactory.stages.assemble.filter import REFUSALS, language
from alignfactory.stages.base import RUBRICS, LLMParams, LLMStage, render

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
# the equality check's shape, in the language its template asks in: reply -> equal?
VERDICTS = {"en": {"Equal": True, "Not Equal": False}, "zh": {"相同": True, "不相同": False}}
EQUALITY = {lang: Constraint.choice(tuple(v)) for lang, v in VERDICTS.items()}
CONTENT = re.compile(r"[^\W_]")  # letters, digits, CJK characters
SPACE = re.compile(r"\s+")


def equality_verdict(text: str) -> bool | None:
    """Free text: True = judged equal, False = not equal, None = no verdict in the reply."""
    t = text.strip().casefold()
    if re.search(r"not\s+equal|unequal|不相同|不相等|不同|不一样", t):
        return False
    if re.search(r"\bequal\b|相同|相等|一样", t):
        return True
    return None


def lang(text: str) -> str:
    return "zh" if language(text) == "zh" else "en"


class Evolve(LLMStage):
    class Params(LLMParams):
        rounds: int = Field(1, ge=1)  # M
        weights: dict[str, float] = {op: 1.0 for op in OPERATIONS}  # operation -> draw weight
        templates: str = "evolve"  # folder under rubrics/: in_depth_/in_breadth_/equal_{en,zh}.jinja
        keep_parent: bool = False
        equality_check: bool = True  # the LLM "Equal / Not Equal" check
        equality_unclear: str = Field("eliminate", pattern="^(keep|eliminate)$")  # a reply with no verdict
        answer_check: bool = True
        max_tokens: int | None = Field(None, ge=1)  # evolved prompt; None = the spec's
        temperature: float | None = Field(None, ge=0)
        answer_max_tokens: int = Field(64, ge=1)  # the probe; a cut reply is retried at 2x, never judged
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
        return [RUBRICS / params.templates / f"{n}_{lg}.jinja" for n in names for lg in VERDICTS]

    @classmethod
    def output_constraints(cls, params) -> list[Constraint]:
        return list(EQUALITY.values()) if params.equality_check else []

    def template(self, kind: str, text: str) -> str:
        return f"{self.params.templates}/{kind}_{lang(text)}.jinja"

    def operation(self, row: dict, round_: int) -> str:
        rng = random.Random(request_seed(self.ctx.seed, f"{self.ctx.name}:{row['id']}:op{round_}"))
        return rng.choices(self.ops, weights=self.op_weights)[0]

    # -- one batch: per round, 1 evolve call, then equality and answer calls for the survivors -------

    def __call__(self, rows: list[dict]) -> list[dict]:
        current = [records.instruction(r) for r in rows]
        base = list(rows)  # the row each next round evolves from: the input row, then its last survivor
        history: list[list[dict]] = [[] for _ in rows]
        children: list[list[dict]] = [[] for _ in rows]  # every survivor, in round order
        rejected: list[dict] = []
        for r in range(1, self.params.rounds + 1):
            # every instruction of each row's chain so far: a rewrite back to one of them is no gain
            earlier = [
                [records.instruction(x) for x in [row, *kids]]
                for row, kids in zip(rows, children, strict=True)
            ]
            steps = self.round(rows, current, r, earlier)  # seeds stay keyed by the input row and the round
            for i, step in enumerate(steps):
                history[i].append({k: step[k] for k in ("round", "operation", "instruction", "status")})
                if step["status"] == "kept":
                    child = self.child(rows[i], base[i], step, history[i])
                    children[i].append(child)
                    current[i], base[i] = step["instruction"], child
                else:
                    rejected.append(self.eliminated(rows[i], base[i], step))
        out = []
        for row, kids, hist in zip(rows, children, history, strict=True):
            if not kids:
                self.meta(row).update({"evolved": False, "history": hist})
                out.append(row)
                continue
            if self.params.keep_parent:
                self.meta(row).update({"evolved": True, "children": [k["id"] for k in kids]})
                out.append(row)
            out += kids
        return out + rejected

    def round(
        self, rows: list[dict], current: list[str], r: int, earlier: list[list[str]] | None = None
    ) -> list[dict]:
        """Evolve every row's current instruction once and run the elimination step on the results.
        earlier[i]: the instructions of row i's chain so far (a rewrite back to one of them is no gain,
        and would give a row an id the chain already has)."""
        ops = [self.operation(row, r) for row in rows]
        convs = []
        for op, text in zip(ops, current, strict=True):
            kind = "in_breadth" if op == "breadth" else "in_depth"
            prompt = render(self.template(kind, text), instruction=text, operation=op).strip()
            convs.append([{"role": "user", "content": prompt}])
        outs = self.complete(convs, rows, self.evolve_sampling, what=f"round{r}")
        steps = []
        for i, (op, text, out) in enumerate(zip(ops, current, outs, strict=True)):
            raw = out.texts[0]
            new = raw.strip().strip('"“”').strip()
            step = {"round": r, "operation": op, "instruction": new, "parent": text, "raw": raw}
            step |= {"finish_reason": out.finish_reason(0), "retried": bool(out.retried)}
            step["status"] = self.static_check(text, new, out, earlier[i] if earlier else [])
            steps.append(step)
        if self.params.equality_check:
            self.check(rows, steps, r, "equal")
        if self.params.answer_check:
            self.check(rows, steps, r, "answer")
        return steps

    def static_check(self, parent: str, new: str, out, earlier: list[str] = ()) -> str:
        if not new:
            return "empty"
        if not out.complete(0):
            why = "stopped at max_tokens" if out.finish_reason(0) == "length" else ""
            return f"truncated: {why or f'finish_reason {out.finish_reason(0)!r}'}"
        low = new.casefold()
        copied = [m for m in self.params.copy_markers if m.casefold() in low]
        if copied:
            return f"copies_template: {copied[0]!r}"
        same = lambda a: SPACE.sub(" ", low) == SPACE.sub(" ", a.strip().casefold())  # noqa: E731
        if same(parent):
            return "no_information_gain: identical to its parent"
        if any(same(e) for e in earlier):
            return "no_information_gain: identical to an earlier round"
        return "kept"

    def check(self, rows: list[dict], steps: list[dict], r: int, what: str) -> None:
        """Engine calls for the steps still kept: the equality judge (one call per language, each with
        its choice constraint) or the answerability probe (one call)."""
        live = [i for i, s in enumerate(steps) if s["status"] == "kept"]
        if what == "equal":
            for language_ in VERDICTS:
                group = [i for i in live if lang(steps[i]["parent"]) == language_]
                if group:
                    self.check_group(rows, steps, r, what, group, language_)
        elif live:
            self.check_group(rows, steps, r, what, live, None)

    def check_group(self, rows, steps, r, what, group, language_) -> None:
        if what == "equal":
            convs = [
                self.user(
                    render(
                        self.template("equal", steps[i]["parent"]),
                        first=steps[i]["parent"],
                        second=steps[i]["instruction"],
                    )
                )
                for i in group
            ]
            sampling = replace(self.judge_sampling, constraint=EQUALITY[language_])
        else:
            convs = [self.user(steps[i]["instruction"]) for i in group]
            sampling = self.answer_sampling
        outs = self.complete(convs, [rows[i] for i in group], sampling, what=f"round{r}:{what}")
        for i, out in zip(group, outs, strict=True):
            steps[i][what] = out.texts[0]
            if what == "equal":
                steps[i]["status"] = self.judge_equal(out, language_, steps[i])
            else:
                budget = sampling.max_tokens * (2 if out.retried else 1)
                steps[i]["status"] = self.judge_answer(out, budget, steps[i])

    @staticmethod
    def user(text: str) -> list[dict]:
        return [{"role": "user", "content": text.strip()}]

    def judge_equal(self, out, language_: str, step: dict) -> str:
        """The equality reply -> status; records the parse path (structured | free_text: why)."""
        text = out.texts[0]
        if out.constrained:
            step["equal_parse"] = "structured"
            verdict = VERDICTS[language_].get(text.strip())
        else:
            step["equal_parse"] = f"free_text: {out.unconstrained_why or 'no constraint'}"
            verdict = equality_verdict(text)
        if not out.complete(0):  # a cut verdict is no verdict, whatever its partial text says
            unclear = f"equality check cut: finish_reason {out.finish_reason(0)!r}"
            verdict = None
        else:
            unclear = f"equality check unreadable: {text.strip()[:40]!r}"
        if verdict:
            return f"no_information_gain: equality check said {text.strip()[:40]!r}"
        if verdict is None:
            step["equal_unclear"] = unclear
            if self.params.equality_unclear == "eliminate":
                return f"unjudged: {unclear}"
        return "kept"

    def judge_answer(self, out, budget: int, step: dict) -> str:
        """The probe answer -> status. WizardLM's rules read a complete reply; a reply cut at max_tokens
        is not judged a refusal from its partial text (it is longer than the budget, not a short
        refusal), and passes when its partial text already holds min_answer_chars letters/digits."""
        text, reason = out.texts[0], out.finish_reason(0)
        chars = len(CONTENT.findall(text))
        step["answer_finish_reason"] = reason
        if reason == "length":
            if chars < self.params.min_answer_chars:
                return f"unprobed: answer cut at {budget} tokens with {chars} letters/digits"
            step["answer_probe"] = (
                f"not judged: the answer ran past {budget} tokens (finish_reason 'length'); refusal "
                "rules read complete replies only, and a reply longer than the budget is not a short refusal"
            )
            return "kept"
        if not out.complete(0):
            return f"unprobed: answer finish_reason {reason!r}"
        words = len(text.split())
        plain = text.replace("\u2019", "'")
        for pattern in self.refusals:
            if words < self.params.refusal_max_words and pattern.search(plain):
                return f"cannot_answer: refusal /{pattern.pattern}/"
        if chars < self.params.min_answer_chars:
            return f"cannot_answer: reply has {chars} < {self.params.min_answer_chars} letters/digits"
        step["answer_probe"] = "judged: complete reply"
        return "kept"

    # -- rows -----------------------------------------------------------------------------------------

    @staticmethod
    def last_user(msgs: list[dict]) -> int:
        return max(i for i, m in enumerate(msgs) if m["role"] == "user")

    def messages(self, row: dict, instruction: str) -> list[dict]:
        """The row's conversation with its last user turn replaced (a trailing answer dropped)."""
        msgs = records.prompt_messages(row)
        last = self.last_user(msgs)
        return msgs[:last] + [{"role": "user", "content": instruction}] + msgs[last + 1 :]

    def step_meta(self, step: dict, origin: dict, msgs: list[dict]) -> dict:
        keys = ("round", "operation", "raw", "finish_reason", "retried")
        keys += ("equal", "equal_parse", "equal_unclear", "answer", "answer_finish_reason", "answer_probe")
        return {k: step[k] for k in keys if k in step} | {
            "evolved_from": step["parent"],
            "origin": origin["id"],  # the input row this chain of rounds started from
            "rewritten_turn": self.last_user(msgs),  # index in messages: the last user turn only
            "user_turns": sum(m["role"] == "user" for m in msgs),
        }

    def child(self, origin: dict, base: dict, step: dict, hist: list[dict]) -> dict:
        """Round k's survivor: a child of `base` (the input row or round k-1's survivor)."""
        msgs = self.messages(base, step["instruction"])
        meta = self.step_meta(step, origin, msgs) | {"evolved": True, "history": list(hist)}
        child = records.derive(base, self.ctx.name, msgs, meta)
        ops = [h["operation"] for h in hist if h["status"] == "kept"]
        child["lineage"] |= {"operation": step["operation"], "round": step["round"], "operations": ops}
        return child

    def eliminated(self, origin: dict, base: dict, step: dict) -> dict:
        """A rejected candidate: a child of the row it evolved from, with the reason and the text judged."""
        msgs = self.messages(base, step["instruction"] or step["raw"])
        cand = records.derive(base, self.ctx.name, msgs, self.step_meta(step, origin, msgs))
        cand["lineage"] |= {"operation": step["operation"], "round": step["round"]}
        reason = step["status"]
        raw = step.get("answer") if reason.startswith(("cannot_answer", "unprobed")) else None
        if reason.startswith(("no_information_gain: equality", "unjudged")):
            raw = step.get("equal")
        return self.reject(cand, f"eliminated: {reason}", raw=raw if raw is not None else step["raw"])
