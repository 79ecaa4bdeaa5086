"""constitution: rewrite responses against principles (rubrics/constitution.yaml), Constitutional-AI style,
or (mode="contrast") ask for one response that follows a guideline and one that deviates (Qwen2).

params.fraction < 1 revises only that share of rows (by a hash of the row id); the rest pass as they are.
Which principles apply to a row: those marked `always`, plus those whose keywords appear in the
instruction or the response; keyword principles come first (they are the specific ones), then the
`always` ones in an order rotated by the row id so that rows spread over them. At most `per_row`.

critique_revise (needs an assistant turn):
    for each applicable principle in turn: critique (rubrics/constitution/critique.<lang>.jinja) ->
    revise (revise.<lang>.jinja); the next principle sees the previous revision.
    row out: a child row whose assistant turn is the final revision (lineage parent = the input row),
             pairs += {"chosen": revision, "rejected": original, "stage", "policy": "revised_vs_original"}
             meta.constitution = {mode, principles, critiques, revisions, original, changed}
    A revision equal to the original leaves the row as it was (no pair; meta.changed = false).
contrast (needs a user turn):
    two generations with the guideline as system prompt: aligned.<lang>.jinja and deviating.<lang>.jinja.
    row out: a child row answered with the aligned response; pairs += (aligned, deviating).
rejects: no_response | unparseable_critique | unparseable_revision | empty_response (raw kept)
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from typing import Literal

from pydantic import BaseModel, Field

from alignfactory import records
from alignfactory.stages.assemble.filter import language
from alignfactory.stages.base import RUBRICS, LLMStage, render
from alignfactory.stages.verify.code_utils import sampling_with

# "Critique:", "**Revision:**", "批评：", "修改后：", "Revised response:" at the start of the reply
LEAD = re.compile(
    r"^\s*(?:#+\s*)?[*_\"'“]*\s*(?:critique|revision|revised(?: response)?|new response|rewritten response|"
    r"批评|评语|修改后(?:的回答)?|修改|改写后(?:的回答)?|新的回答)\s*[*_]*\s*[:：]\s*[*_]*\s*",
    re.IGNORECASE,
)
PREAMBLE = re.compile(r"^\s*(?:here is|here's|sure|以下是|好的)[^\n]{0,80}[:：]\s*\n", re.IGNORECASE)


def clean_reply(text: str) -> str:
    """The model's answer without a leading label or "Here is the revised response:" line, without
    wrapping quotes. Empty string if nothing is left."""
    out = text.strip()
    for _ in range(2):  # "Sure, here it is:\nRevision: ..." has both
        out = PREAMBLE.sub("", out, count=1).strip()
        out = LEAD.sub("", out, count=1).strip()
    if len(out) >= 2 and out[0] in '"“' and out[-1] in '"”':
        out = out[1:-1].strip()
    return out


@cache
def load_principles(path: str) -> tuple[dict, ...]:
    import yaml

    file = RUBRICS / path
    try:
        data = yaml.safe_load(file.read_text("utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{file}: YAML error: {e}") from None
    items = data.get("principles") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{file}: expected a non-empty `principles:` list")
    for i, p in enumerate(items):
        for key in ("id", "critique", "revision", "guideline", "when"):
            if key not in p:
                raise ValueError(f"{file}: principles[{i}] has no {key!r}")
        for key in ("critique", "revision", "guideline", "when"):
            if not all(p[key].get(lang) for lang in ("en", "zh")):
                raise ValueError(f"{file}: principles[{i}] ({p['id']}).{key} needs both en and zh")
    return tuple(items)


class Constitution(LLMStage):
    class Params(BaseModel, extra="forbid"):
        mode: Literal["critique_revise", "contrast"] = "critique_revise"
        principles_file: str = "constitution.yaml"
        principles: list[str] | None = None  # ids to use; None = all in the file
        per_row: int = Field(1, ge=1)  # principles applied per row (each is 2 calls in critique_revise)
        language: Literal["auto", "en", "zh"] = "auto"
        max_tokens: int | None = Field(None, ge=1)  # overrides sampling.max_tokens
        critique_max_tokens: int | None = Field(None, ge=1)  # default: max_tokens
        fraction: float = Field(1.0, gt=0, le=1)  # rows revised, chosen by a hash of the row id; others pass

    requires = {"messages": "critique_revise: a conversation ending in an assistant turn"}
    adds = ("messages", "lineage", "pairs", "meta.constitution")

    def __init__(self, params, ctx, engine=None):
        principles = load_principles(params.principles_file)
        known = {p["id"] for p in principles}
        unknown = sorted(set(params.principles or ()) - known)
        if unknown:
            raise ValueError(f"constitution: principles {unknown} not in rubrics/{params.principles_file}")
        super().__init__(params, ctx, engine)
        self.principles = [p for p in principles if params.principles is None or p["id"] in params.principles]

    @classmethod
    def template_files(cls, params):
        names = ("critique", "revise") if params.mode == "critique_revise" else ("aligned", "deviating")
        return [RUBRICS / params.principles_file] + [
            RUBRICS / "constitution" / f"{n}.{lang}.jinja" for n in names for lang in ("en", "zh")
        ]

    def lang(self, row: dict) -> str:
        return self.params.language if self.params.language != "auto" else language(records.instruction(row))

    def applicable(self, row: dict) -> list[dict]:
        text = f"{records.instruction(row)}\n{records.response(row) or ''}".lower()
        specific = [
            p
            for p in self.principles
            if not p.get("always")
            and any(
                k.lower() in text for lang in ("en", "zh") for k in (p.get("keywords") or {}).get(lang) or []
            )
        ]
        general = [p for p in self.principles if p.get("always")]
        if general:
            k = int(row["id"][:8], 16) % len(general)  # rotate: rows spread over the general principles
            general = general[k:] + general[:k]
        return (specific + general)[: self.params.per_row]

    def sampling(self, max_tokens: int | None):
        return sampling_with(self.ctx.sampling, n=1, max_tokens=max_tokens or self.params.max_tokens)

    def __call__(self, rows: list[dict]) -> list[dict]:
        picked = [r for r in rows if self.picked(r)]
        done = (
            self.critique_revise(picked) if self.params.mode == "critique_revise" else self.contrast(picked)
        )
        out = iter(done)  # both modes return one row per input row, in order
        return [next(out) if self.picked(r) else r for r in rows]

    def picked(self, row: dict) -> bool:
        """Deterministic sampling: sha256 of the row id below `fraction` (the same rows on every run)."""
        if self.params.fraction >= 1:
            return True
        digest = hashlib.sha256(f"constitution:{row['id']}".encode()).hexdigest()
        return int(digest[:8], 16) / 16**8 < self.params.fraction

    # ---- critique -> revise -------------------------------------------------------------------

    def critique_revise(self, rows: list[dict]) -> list[dict]:
        out = {id(r): r for r in rows}  # input row -> its output row, input order kept
        live = []  # one entry per row being revised: its principles, state and current response
        for r in rows:
            if records.response(r) is None:
                self.reject(r, "no_response: critique_revise needs an assistant turn")
                continue
            ps = self.applicable(r)
            state = self.meta(r)  # on the input row too, so a rejected row keeps its critiques
            state.update(mode="critique_revise", principles=[p["id"] for p in ps], critiques=[], revisions=[])
            live.append({"row": r, "ps": ps, "state": state, "cur": records.response(r), "ok": True})
        crit_sampling = self.sampling(self.params.critique_max_tokens or self.params.max_tokens)
        for step in range(self.params.per_row):
            batch = [it for it in live if it["ok"] and step < len(it["ps"])]
            crits = self.ask(
                [self.critique_prompt(it, step) for it in batch], batch, crit_sampling, f"critique:{step}"
            )
            to_revise = []
            for it, raw in zip(batch, crits, strict=True):
                it["state"]["critiques"].append(raw)
                if clean_reply(raw):
                    to_revise.append(it)
                else:
                    it["ok"] = False
                    self.reject(it["row"], f"unparseable_critique: {it['ps'][step]['id']}", raw=raw)
            revs = self.ask(
                [self.revise_prompt(it, step, clean_reply(it["state"]["critiques"][-1])) for it in to_revise],
                to_revise,
                self.sampling(None),
                f"revise:{step}",
            )
            for it, raw in zip(to_revise, revs, strict=True):
                it["state"]["revisions"].append(raw)
                if clean_reply(raw):
                    it["cur"] = clean_reply(raw)
                else:
                    it["ok"] = False
                    self.reject(it["row"], f"unparseable_revision: {it['ps'][step]['id']}", raw=raw)
        for it in live:
            if it["ok"]:
                out[id(it["row"])] = self.finish(it["row"], it["state"], it["cur"])
        return list(out.values())

    def ask(self, convs: list[list[dict]], items: list[dict], sampling, what: str) -> list[str]:
        if not convs:
            return []
        return [c.texts[0] for c in self.complete(convs, [it["row"] for it in items], sampling, what=what)]

    def critique_prompt(self, item: dict, step: int) -> list[dict]:
        row, principle, response = item["row"], item["ps"][step], item["cur"]
        lang = self.lang(row)
        text = render(
            f"constitution/critique.{lang}.jinja",
            principle_id=principle["id"],
            critique_request=principle["critique"][lang],
            instruction=records.instruction(row),
            response=response,
        )
        return [{"role": "user", "content": text}]

    def revise_prompt(self, item: dict, step: int, critique: str) -> list[dict]:
        row, principle, response = item["row"], item["ps"][step], item["cur"]
        lang = self.lang(row)
        text = render(
            f"constitution/revise.{lang}.jinja",
            revision_request=principle["revision"][lang],
            instruction=records.instruction(row),
            response=response,
            critique=critique,
        )
        return [{"role": "user", "content": text}]

    def finish(self, row: dict, state: dict, final: str) -> dict:
        original = records.response(row)
        changed = final.strip() != original.strip()
        meta = {**state, "original": original, "changed": changed}
        if not changed:
            self.meta(row).update(meta)
            return row
        child = records.derive(row, self.ctx.name, records.with_response(row, final), meta)
        child["pairs"] = list(row.get("pairs") or []) + [
            {
                "chosen": final,
                "rejected": original,
                "stage": self.ctx.name,
                "policy": "revised_vs_original",
                "principles": state["principles"],
            }
        ]
        return child

    # ---- contrast (Qwen2): aligned vs deviating ----------------------------------------------------

    def contrast(self, rows: list[dict]) -> list[dict]:
        chosen = [self.applicable(r)[: self.params.per_row] for r in rows]
        convs = {
            kind: [self.contrast_prompt(r, ps, kind) for r, ps in zip(rows, chosen, strict=True)]
            for kind in ("aligned", "deviating")
        }
        outs = {
            kind: self.complete(convs[kind], rows, self.sampling(None), what=kind)
            for kind in ("aligned", "deviating")
        }
        result = []
        for i, r in enumerate(rows):
            good, bad = outs["aligned"][i].texts[0].strip(), outs["deviating"][i].texts[0].strip()
            meta = {
                "mode": "contrast",
                "principles": [p["id"] for p in chosen[i]],
                "aligned": good,
                "deviating": bad,
            }
            if not good or not bad:
                self.reject(r, "empty_response: " + ("aligned" if not good else "deviating"), raw=good or bad)
                result.append(r)
                continue
            child = records.derive(
                r, self.ctx.name, records.prompt_messages(r) + [{"role": "assistant", "content": good}], meta
            )
            if good != bad:
                child["pairs"] = list(r.get("pairs") or []) + [
                    {
                        "chosen": good,
                        "rejected": bad,
                        "stage": self.ctx.name,
                        "policy": "aligned_vs_deviating",
                        "principles": meta["principles"],
                    }
                ]
            result.append(child)
        return result

    def contrast_prompt(self, row: dict, principles: list[dict], kind: str) -> list[dict]:
        lang = self.lang(row)
        guideline = " ".join(p["guideline"][lang] for p in principles)
        system = render(f"constitution/{kind}.{lang}.jinja", guideline=guideline).strip()
        prompt = [m for m in records.prompt_messages(row) if m["role"] != "system"]
        return [{"role": "system", "content": system}] + prompt
