"""constitution: rewrite a response against principles (rubrics/constitution.yaml), Constitutional-AI
style, only where a principle is broken and only into a revision that still answers the request; or
(mode="contrast") ask for one response that follows a guideline and one that deviates (Qwen2).

params.fraction < 1 revises only that share of rows (by a hash of the row id); the rest pass as they are.
Which principles apply to a row: those marked `always`, plus those whose keywords appear in the
instruction or the response as whole words (English: case-insensitive, between word boundaries, so
"kill" is not in "skill"; Chinese: a run of whole jieba tokens, so "杀" is not in "杀死");
keyword principles come first (they are the specific ones), then the `always` ones in an order
rotated by the row id so that rows spread over them. At most `per_row`.

critique_revise (needs an assistant turn; "no_response" reject otherwise), per row:
  1. critique (critique.<lang>.jinja) shows the applicable principles and asks for a structured
     decision, {"violates": "yes"|"no", "principle": <id>|"none", "what": <short>} (critique_constraint;
     a free-text reply is read only when the engine did not constrain: meta.parse says which path
     and why). A critique that is cut off, unreadable or names a principle it was not shown, a "yes"
     whose "what" names no problem ("none"), and a "no" leave the row exactly as it was, with no
     pair: the constitution never rejects a row that was good before it, it only declines to
     rewrite (meta.outcome says why).
  2. revise (revise.<lang>.jinja) against the violated principle, given the critique's "what".
  3. the revision is accepted only if, in this order (the first that fails names the reason):
       truncated       its finish reason is not "stop" (after one retry at 2x budget, on_truncated)
       empty           nothing left after stripping a "Revision:" label
       (unchanged)     equal to the original: outcome "unchanged", no pair, nothing discarded
       template_text   a label line ("Critique:", "Revision:") or a run of 6 tokens of the revise
                       template's own text (its fixed lines and the principle's revision request)
       off_topic       cosine(prompt, revision) < cosine(prompt, original) - relevance_margin, by the
                       embedder (all-MiniLM-L6-v2 unless params.embedder) when it covers the prompt's
                       language (embedder_languages); otherwise not measured and step 4 decides alone
       does_not_answer a structured judge check (answers.<lang>.jinja, choice yes|no) did not say
                       "yes"; a cut or unreadable check is `unchecked`
     A rejected revision leaves the original row as it was (meta.revision_rejected = reason, no pair)
     and is itself emitted after the output rows as a discarded candidate: a rejected child of the
     input row (records.discarded_candidate), reason "revision_rejected: <reason>", raw model text.
  4. accepted: a child row (lineage parent = the input row) whose assistant turn is the revision with
     its finish reason; pairs += {chosen: revision, rejected: original, chosen_finish_reason,
     rejected_finish_reason, stage, policy "revised_vs_original", principles}; no pair when the
     original itself is incomplete (records.response_complete).
  meta.constitution = {mode, principles (shown), parse, critique {raw, finish_reason, parse, violates,
  principle, what}, outcome, revision {raw, finish_reason}, checks {template_text, cosine_original,
  cosine_revision, relevance_floor, relevance ("ok" | "off_topic" | "not_measured: ..."), answers
  {raw, finish_reason, parse, verdict}}, revision_rejected, original, changed, pair}
contrast (needs a user turn):
  two generations with the guideline as system prompt: aligned.<lang>.jinja and deviating.<lang>.jinja.
  A cut or empty aligned reply rejects the row (truncated | empty_response, raw kept); otherwise a
  child row answered with it. The pair (aligned, deviating) is added only when the deviating reply is
  complete, differs, and a structured check (deviates.<lang>.jinja, yes|no) says it breaks the
  guideline; meta.pair says why not otherwise.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from typing import Literal

from pydantic import Field

from alignfactory import records
from alignfactory.llm.base import Constraint
from alignfactory.stages.assemble.filter import language
from alignfactory.stages.base import RUBRICS, LLMParams, LLMStage, render
from alignfactory.stages.verify.code_utils import json_values, sampling_with

# "Critique:", "**Revision:**", "批评：", "修改后：", "Revised response:" at the start of the reply
LEAD = re.compile(
    r"^\s*(?:#+\s*)?[*_\"'“]*\s*(?:critique|revision|revised(?: response)?|new response|rewritten response|"
    r"批评|评语|修改后(?:的回答)?|修改|改写后(?:的回答)?|新的回答)\s*[*_]*\s*[:：]\s*[*_]*\s*",
    re.IGNORECASE,
)
PREAMBLE = re.compile(r"^\s*(?:here is|here's|sure|以下是|好的)[^\n]{0,80}[:：]\s*\n", re.IGNORECASE)
# a label line anywhere in a revision: the model wrote a prompt section, not an answer
LABEL_LINE = re.compile(
    r"^[ \t]*(?:#+[ \t]*)?[*_]*[ \t]*(?:critique|revision|revised response|revision request|批评|修改后|改写后)"
    r"[ \t]*[*_]*[ \t]*[:：]",
    re.IGNORECASE | re.MULTILINE,
)
TOKEN = re.compile(r"[a-z0-9']+|[\u3400-\u9fff]")  # words (lowercased text) and single CJK characters
RUN = 6  # tokens of template text in a row that make a revision "template text"
SENTINEL = "\x00"
WHAT_CHARS = 200  # the critique's "what": one short sentence
YES_NO = ("yes", "no")
NO_PROBLEM = ("", "none", "n/a", "no", "nothing", "无", "没有")  # a critique's "what" that names nothing
ANSWER = Constraint.choice(YES_NO)  # the answers / deviates judge checks
VERDICT = re.compile(r"^\W*(?:(yes|true)\b|(no|false)\b|(是|对)|(否|不))", re.IGNORECASE)


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


def critique_constraint(ids: list[str]) -> Constraint:
    """The critique's shape: a decision first, then which principle, then what (one short sentence)."""
    return Constraint.json(
        {
            "type": "object",
            "properties": {
                "violates": {"type": "string", "enum": list(YES_NO)},
                "principle": {"type": "string", "enum": [*ids, "none"]},
                "what": {"type": "string", "maxLength": WHAT_CHARS},
            },
            "required": ["violates", "principle", "what"],
            "additionalProperties": False,
        }
    )


def yes_no(text) -> str | None:
    """ "yes" | "no" from a verdict (a JSON bool, "Yes.", "no, because", "是", "不是"), None if unreadable."""
    if isinstance(text, bool):
        return YES_NO[0] if text else YES_NO[1]
    m = VERDICT.match(str(text or ""))
    if not m:
        return None
    return "yes" if m.group(1) or m.group(3) else "no"


def parse_path(out) -> str:
    """How a reply is read: "structured" when the engine enforced the constraint, else why not."""
    return "structured" if out.constrained else f"free_text: {out.unconstrained_why or 'not constrained'}"


# ---- principle keywords: whole words (English), whole jieba tokens (Chinese) -------------------------


@cache
def jieba_tokenizer():
    """A jieba tokenizer of our own (the global one is left alone), its dictionary cache kept under
    the alignfactory cache dir instead of a random /tmp file. ~1 s to load, once per process."""
    import logging
    import warnings

    with warnings.catch_warnings():  # jieba 0.42 imports pkg_resources (deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        import jieba

    from alignfactory.llm.embedded import cache_root

    jieba.setLogLevel(logging.WARNING)
    tok = jieba.Tokenizer()
    tok.tmp_dir = str(cache_root().parent / "jieba")
    (cache_root().parent / "jieba").mkdir(parents=True, exist_ok=True)
    return tok


def zh_tokens(text: str) -> list[str]:
    return [t for t in jieba_tokenizer().lcut(text) if t.strip()]


def has_cjk(text: str) -> bool:
    return re.search(r"[\u3400-\u9fff]", text) is not None


@cache
def english_pattern(keyword: str) -> re.Pattern:
    """A keyword (a word or a word sequence) between word boundaries, any spacing, any case."""
    words = [re.escape(w) for w in keyword.lower().split()]
    return re.compile(r"(?<![\w-])" + r"\s+".join(words) + r"(?![\w-])", re.IGNORECASE)


def keyword_hit(keyword: str, text: str, tokens: list[str] | None) -> bool:
    """keyword occurs in text as whole words: English by regex, Chinese as a run of jieba tokens
    (tokens: the text's jieba tokens, None when the text has no CJK)."""
    if not has_cjk(keyword):
        return english_pattern(keyword).search(text) is not None
    if tokens is None:
        return False
    seq = zh_tokens(keyword)
    n = len(seq)
    return any(tokens[i : i + n] == seq for i in range(len(tokens) - n + 1))


# ---- template text in a revision ---------------------------------------------------------------------


def template_fragments(template: str, revision_request: str) -> list[str]:
    """The revise template's own text: rendered with a sentinel for each row value, split at the
    sentinels and at line ends (the principle's revision request is template text too)."""
    text = render(
        template,
        instruction=SENTINEL,
        response=SENTINEL,
        critique=SENTINEL,
        revision_request=revision_request,
    )
    return [f.strip() for line in text.splitlines() for f in line.split(SENTINEL) if f.strip()]


def grams(text: str) -> set[tuple[str, ...]]:
    toks = TOKEN.findall(text.lower())
    return {tuple(toks[i : i + RUN]) for i in range(len(toks) - RUN + 1)}


def template_text(reply: str, fragments: list[str], own: str = "") -> str | None:
    """The first template text found in reply, or None: a label line ("Critique:" starting a line),
    a short fragment ("[Problem]", "【问题】") verbatim, or RUN tokens in a row of a longer one.
    Runs that also occur in `own` (the request and the original response) do not count."""
    label = LABEL_LINE.search(reply)
    if label:
        return label.group(0).strip()
    low, mine, skip = reply.lower(), grams(reply), grams(own)
    for frag in fragments:
        toks = TOKEN.findall(frag.lower())
        if len(toks) < RUN:
            if frag.lower() in low and frag.lower() not in own.lower():
                return frag
        elif any(g in mine and g not in skip for g in grams(frag)):
            return frag
    return None


# ---- principles ---------------------------------------------------------------------------------


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


def principle_ids(params) -> list[str]:
    """The ids the critique may name (the critique schema's enum, minus "none")."""
    chosen = params.principles
    return [p["id"] for p in load_principles(params.principles_file) if chosen is None or p["id"] in chosen]


class Constitution(LLMStage):
    class Params(LLMParams):
        mode: Literal["critique_revise", "contrast"] = "critique_revise"
        principles_file: str = "constitution.yaml"
        principles: list[str] | None = None  # ids to use; None = all in the file
        per_row: int = Field(1, ge=1)  # principles shown to the critic per row
        language: Literal["auto", "en", "zh"] = "auto"
        max_tokens: int | None = Field(None, ge=1)  # overrides sampling.max_tokens (revisions, contrast)
        critique_max_tokens: int | None = Field(None, ge=1)  # default: max_tokens
        check_max_tokens: int = Field(16, ge=1)  # the yes/no judge checks (answers, deviates)
        fraction: float = Field(1.0, gt=0, le=1)  # rows revised, chosen by a hash of the row id; others pass
        relevance_margin: float = Field(0.1, ge=0)  # cosine to the prompt a revision may lose vs the original
        embedder: str | None = None  # sentence-transformers dir; None = all-MiniLM-L6-v2 (English-first)
        # prompt languages (filter.language) the embedder covers; others are decided by the judge check
        # alone. With a multilingual embedder set ["en", "zh"].
        embedder_languages: list[Literal["en", "zh", "other"]] = ["en"]

    requires = {"messages": "critique_revise: a conversation ending in an assistant turn"}
    adds = ("messages", "lineage", "pairs", "meta.constitution")

    def __init__(self, params, ctx, engine=None, embedder=None):
        principles = load_principles(params.principles_file)
        known = {p["id"] for p in principles}
        unknown = sorted(set(params.principles or ()) - known)
        if unknown:
            raise ValueError(f"constitution: principles {unknown} not in rubrics/{params.principles_file}")
        super().__init__(params, ctx, engine)
        self.principles = [p for p in principles if params.principles is None or p["id"] in params.principles]
        self._embedder = embedder  # built on first use (tests inject a stub)

    @classmethod
    def template_files(cls, params):
        names = (
            ("critique", "revise", "answers")
            if params.mode == "critique_revise"
            else ("aligned", "deviating", "deviates")
        )
        return [RUBRICS / params.principles_file] + [
            RUBRICS / "constitution" / f"{n}.{lang}.jinja" for n in names for lang in ("en", "zh")
        ]

    @classmethod
    def output_constraints(cls, params) -> list[Constraint]:
        if params.mode == "contrast":
            return [ANSWER]
        return [critique_constraint(principle_ids(params)), ANSWER]

    def embedder(self):
        if self._embedder is None:
            from alignfactory.llm.embed import Embedder

            self._embedder = Embedder(self.params.embedder)
        return self._embedder

    def lang(self, row: dict) -> str:
        if self.params.language != "auto":
            return self.params.language
        return "zh" if language(records.instruction(row)) == "zh" else "en"  # "other" gets English

    def applicable(self, row: dict) -> list[dict]:
        text = f"{records.instruction(row)}\n{records.response(row) or ''}".replace("’", "'")
        tokens = zh_tokens(text) if has_cjk(text) else None
        specific = [
            p
            for p in self.principles
            if not p.get("always")
            and any(
                keyword_hit(k, text, tokens)
                for lang in ("en", "zh")
                for k in (p.get("keywords") or {}).get(lang) or []
            )
        ]
        general = [p for p in self.principles if p.get("always")]
        if general:
            k = int(row["id"][:8], 16) % len(general)  # rotate: rows spread over the general principles
            general = general[k:] + general[:k]
        return (specific + general)[: self.params.per_row]

    def sampling(self, max_tokens: int | None, constraint: Constraint | None = None):
        return sampling_with(
            self.ctx.sampling, n=1, max_tokens=max_tokens or self.params.max_tokens, constraint=constraint
        )

    def check_sampling(self):
        """The yes/no checks: greedy, a few tokens, constrained to yes|no."""
        return sampling_with(
            self.ctx.sampling,
            n=1,
            max_tokens=self.params.check_max_tokens,
            temperature=0.0,
            constraint=ANSWER,
        )

    def __call__(self, rows: list[dict]) -> list[dict]:
        picked = [r for r in rows if self.picked(r)]
        discarded: list[dict] = []  # rejected revisions, as discarded candidate rows
        if self.params.mode == "critique_revise":
            done = self.critique_revise(picked, discarded)
        else:
            done = self.contrast(picked)
        out = iter(done)  # both modes return one row per picked row, in order
        return [next(out) if self.picked(r) else r for r in rows] + discarded

    def picked(self, row: dict) -> bool:
        """Deterministic sampling: sha256 of the row id below `fraction` (the same rows on every run)."""
        if self.params.fraction >= 1:
            return True
        digest = hashlib.sha256(f"constitution:{row['id']}".encode()).hexdigest()
        return int(digest[:8], 16) / 16**8 < self.params.fraction

    # ---- critique -> revise -------------------------------------------------------------------

    def critique_revise(self, rows: list[dict], discarded: list[dict]) -> list[dict]:
        out = {id(r): r for r in rows}  # input row -> its output row, input order kept
        live = []  # rows with a response: {"row", "ps" (shown principles), "meta"}
        for r in rows:
            if records.response(r) is None:
                self.reject(r, "no_response: critique_revise needs an assistant turn")
                continue
            ps = self.applicable(r)
            meta = self.meta(r)  # on the input row: it is the output whenever no revision is accepted
            meta.update(mode="critique_revise", principles=[p["id"] for p in ps])
            live.append({"row": r, "ps": ps, "meta": meta})

        # 1. critique: a structured decision per row
        crit_sampling = self.sampling(
            self.params.critique_max_tokens or self.params.max_tokens,
            critique_constraint(principle_ids(self.params)),
        )
        crits = self.ask([self.critique_prompt(it) for it in live], live, crit_sampling, "critique")
        violated = []
        for it, c in zip(live, crits, strict=True):
            info, why = self.read_critique(c, [p["id"] for p in it["ps"]])
            it["meta"].update(critique=info, parse=info["parse"])
            if why is not None:
                it["meta"]["outcome"] = f"critique_failed: {why}"
            elif info["violates"] == "no":
                it["meta"]["outcome"] = "no_violation"
            else:
                it["principle"] = next(p for p in it["ps"] if p["id"] == info["principle"])
                violated.append(it)

        # 2. revise against the violated principle
        revs = self.ask([self.revise_prompt(it) for it in violated], violated, self.sampling(None), "revise")
        checked = []
        for it, c in zip(violated, revs, strict=True):
            it["out"], it["text"] = c, clean_reply(c.texts[0])
            it["meta"]["revision"] = {"raw": c.texts[0], "finish_reason": c.finish_reason(0)}
            why = self.local_checks(it)
            if why == "unchanged":
                it["meta"].update(outcome="unchanged", changed=False)
            elif why is not None:
                self.decline(it, why, discarded)
            else:
                checked.append(it)

        # 3. relevance by embedding (where the embedder covers the language), then the judge check
        for it, why in zip(checked, self.relevance(checked), strict=True):
            if why is not None:
                self.decline(it, why, discarded)
        checked = [it for it in checked if "revision_rejected" not in it["meta"]]
        answers = self.ask(
            [self.answers_prompt(it) for it in checked], checked, self.check_sampling(), "answers"
        )
        for it, c in zip(checked, answers, strict=True):
            verdict, info = self.read_check(c)
            it["meta"]["checks"]["answers"] = info
            if verdict == "yes":
                out[id(it["row"])] = self.accept(it)
            elif verdict == "no":
                self.decline(it, "does_not_answer: the judge check said no", discarded)
            else:
                self.decline(it, f"unchecked: answers check {info['unreadable']}", discarded)
        return list(out.values())

    def ask(self, convs: list[list[dict]], items: list[dict], sampling, what: str) -> list:
        if not convs:
            return []
        return self.complete(convs, [it["row"] for it in items], sampling, what=what)

    def read_critique(self, c, shown: list[str]) -> tuple[dict, str | None]:
        """The critique's fields and None, or the fields so far and why it cannot be used."""
        raw = c.texts[0]
        info = {"raw": raw, "finish_reason": c.finish_reason(0), "parse": parse_path(c)}
        if not c.complete(0):
            return info, f"truncated: finish_reason {c.finish_reason(0)!r}"
        obj = next((v for v in json_values(raw) if isinstance(v, dict) and "violates" in v), None)
        if obj is not None:
            violates, principle, what = yes_no(obj.get("violates")), obj.get("principle"), obj.get("what")
        elif not c.constrained:  # free text: "Yes, it ... (honesty)"; the principle by name
            violates, what = yes_no(raw), clean_reply(raw)
            principle = next((p for p in shown if re.search(rf"\b{re.escape(p)}\b", raw, re.I)), None)
        else:
            return info, "unparseable"
        if violates is None:
            return info, "unparseable: no yes/no verdict"
        if violates == "yes" and principle not in shown and len(shown) == 1 and not c.constrained:
            principle = shown[0]  # free text about the one principle it was shown
        info.update(violates=violates, principle=principle, what=str(what or "").strip())
        if violates == "yes" and principle not in shown:
            return info, f"principle {principle!r} not among those shown {shown}"
        if violates == "yes" and info["what"].lower().strip(".。 ") in NO_PROBLEM:
            return info, "a violation that names no problem"  # nothing concrete to fix
        return info, None

    def local_checks(self, it: dict) -> str | None:
        """Why the revision fails before any model is asked, "unchanged", or None."""
        c, text, row = it["out"], it["text"], it["row"]
        if not c.complete(0):
            return f"truncated: finish_reason {c.finish_reason(0)!r}"
        if not text:
            return "empty"
        if text.strip() == records.response(row).strip():
            return "unchanged"
        lang = self.lang(row)
        frags = template_fragments(f"constitution/revise.{lang}.jinja", it["principle"]["revision"][lang])
        own = f"{records.instruction(row)}\n{records.response(row)}"
        found = template_text(text, frags, own)
        it["meta"]["checks"] = {"template_text": found}
        return f"template_text: {found}" if found else None

    def relevance(self, items: list[dict]) -> list[str | None]:
        """Per item: off_topic when the revision's cosine to the prompt falls more than the margin below
        the original's; None when it holds or the embedder does not cover the prompt's language."""
        covered = []
        for it in items:
            lang = language(records.instruction(it["row"]))
            if lang in self.params.embedder_languages:
                covered.append(it)
            else:
                it["meta"]["checks"]["relevance"] = (
                    f"not_measured: prompt language {lang!r} not in embedder_languages"
                )
        if covered:  # one encode call: (3 * rows, dim), L2-normalized -> (rows, 3, dim)
            texts = [
                t
                for it in covered
                for t in (records.instruction(it["row"]), records.response(it["row"]), it["text"])
            ]
            vecs = self.embedder().encode(texts).reshape(len(covered), 3, -1)
        why = {}
        for it, (p, o, r) in zip(covered, vecs if covered else [], strict=True):
            cos_o, cos_r = round(float(p @ o), 4), round(float(p @ r), 4)
            floor = round(cos_o - self.params.relevance_margin, 4)
            ok = cos_r >= floor
            it["meta"]["checks"].update(
                cosine_original=cos_o,
                cosine_revision=cos_r,
                relevance_floor=floor,
                relevance="ok" if ok else "off_topic",
            )
            if not ok:
                why[id(it)] = f"off_topic: cosine to the prompt {cos_r} < {floor} (original {cos_o})"
        return [why.get(id(it)) for it in items]

    def read_check(self, c) -> tuple[str | None, dict]:
        """A yes/no judge check: ("yes" | "no" | None, its record)."""
        raw = c.texts[0]
        info = {"raw": raw, "finish_reason": c.finish_reason(0), "parse": parse_path(c), "verdict": None}
        if not c.complete(0):
            info["unreadable"] = f"truncated: finish_reason {c.finish_reason(0)!r}"
            return None, info
        verdict = raw.strip().strip('"').lower() if c.constrained else yes_no(raw)
        if verdict not in YES_NO:
            info["unreadable"] = "unparseable"
            return None, info
        info["verdict"] = verdict
        return verdict, info

    def decline(self, it: dict, why: str, discarded: list[dict]) -> None:
        """The revision is not used: the original row stays as it was; the revision goes to rejected/
        as a discarded candidate (a rejected child of the input row), with its raw text."""
        row, c = it["row"], it["out"]
        it["meta"].update(outcome=f"revision_rejected: {why}", revision_rejected=why, changed=False)
        text = it["text"] or c.texts[0]
        cand = records.derive(
            row, self.ctx.name, records.with_response(row, text, c.finish_reason(0)), dict(it["meta"])
        )
        discarded.append(self.reject(cand, f"revision_rejected: {why}", raw=c.texts[0]))

    def accept(self, it: dict) -> dict:
        row, final, c = it["row"], it["text"], it["out"]
        original = records.response(row)
        meta = it["meta"] | {"outcome": "revised", "original": original, "changed": True}
        child = records.derive(
            row, self.ctx.name, records.with_response(row, final, c.finish_reason(0)), meta
        )
        if not records.response_complete(row):
            meta["pair"] = (
                f"none: original incomplete (finish_reason {records.response_finish_reason(row)!r})"
            )
            return child
        meta["pair"] = "made"
        child["pairs"] = list(row.get("pairs") or []) + [
            {
                "chosen": final,
                "rejected": original,
                "chosen_finish_reason": c.finish_reason(0),
                "rejected_finish_reason": records.response_finish_reason(row),
                "stage": self.ctx.name,
                "policy": "revised_vs_original",
                "principles": [it["principle"]["id"]],
            }
        ]
        return child

    def critique_prompt(self, item: dict) -> list[dict]:
        row = item["row"]
        lang = self.lang(row)
        text = render(
            f"constitution/critique.{lang}.jinja",
            principles=[{"id": p["id"], "critique": p["critique"][lang]} for p in item["ps"]],
            instruction=records.instruction(row),
            response=records.response(row),
        )
        return [{"role": "user", "content": text}]

    def revise_prompt(self, item: dict) -> list[dict]:
        row, principle = item["row"], item["principle"]
        lang = self.lang(row)
        text = render(
            f"constitution/revise.{lang}.jinja",
            revision_request=principle["revision"][lang],
            instruction=records.instruction(row),
            response=records.response(row),
            critique=item["meta"]["critique"]["what"] or principle["critique"][lang],
        )
        return [{"role": "user", "content": text}]

    def answers_prompt(self, item: dict) -> list[dict]:
        row = item["row"]
        text = render(
            f"constitution/answers.{self.lang(row)}.jinja",
            instruction=records.instruction(row),
            response=item["text"],
        )
        return [{"role": "user", "content": text}]

    # ---- contrast (Qwen2): aligned vs deviating ----------------------------------------------------

    def contrast(self, rows: list[dict]) -> list[dict]:
        chosen = [self.applicable(r) for r in rows]
        convs = {
            kind: [self.contrast_prompt(r, ps, kind) for r, ps in zip(rows, chosen, strict=True)]
            for kind in ("aligned", "deviating")
        }
        outs = {
            kind: self.complete(convs[kind], rows, self.sampling(None), what=kind)
            for kind in ("aligned", "deviating")
        }
        result, to_check = [], []
        for i, r in enumerate(rows):
            a, d = outs["aligned"][i], outs["deviating"][i]
            good, bad = a.texts[0].strip(), d.texts[0].strip()
            meta = {
                "mode": "contrast",
                "principles": [p["id"] for p in chosen[i]],
                "aligned": good,
                "deviating": bad,
                "aligned_finish_reason": a.finish_reason(0),
                "deviating_finish_reason": d.finish_reason(0),
            }
            if not a.complete(0) or not good:
                self.meta(r).update(meta)
                if not self.reject_incomplete(r, a, 0, "aligned"):
                    self.reject(r, "empty_response: aligned", raw=a.texts[0])
                result.append(r)
                continue
            msgs = records.prompt_messages(r) + [records.assistant(good, a.finish_reason(0))]
            child = records.derive(r, self.ctx.name, msgs, meta)
            result.append(child)
            if not d.complete(0):
                meta["pair"] = f"none: deviating reply incomplete (finish_reason {d.finish_reason(0)!r})"
            elif not bad or bad == good:
                meta["pair"] = "none: deviating reply empty or equal to the aligned one"
            else:
                to_check.append((child, r, chosen[i], a, d))
        checks = (
            self.complete(
                [self.deviates_prompt(r, ps, d.texts[0].strip()) for _, r, ps, _, d in to_check],
                [r for _, r, _, _, _ in to_check],
                self.check_sampling(),
                what="deviates",
            )
            if to_check
            else []
        )
        for (child, r, _, a, d), c in zip(to_check, checks, strict=True):
            meta = child["meta"][self.ctx.name]
            verdict, meta["deviates"] = self.read_check(c)
            if verdict != "yes":
                why = "judged not to deviate" if verdict == "no" else meta["deviates"]["unreadable"]
                meta["pair"] = f"none: deviates check {why}"
                continue
            meta["pair"] = "made"
            child["pairs"] = list(r.get("pairs") or []) + [
                {
                    "chosen": meta["aligned"],
                    "rejected": meta["deviating"],
                    "chosen_finish_reason": a.finish_reason(0),
                    "rejected_finish_reason": d.finish_reason(0),
                    "stage": self.ctx.name,
                    "policy": "aligned_vs_deviating",
                    "principles": meta["principles"],
                }
            ]
        return result

    def guideline(self, row: dict, principles: list[dict]) -> str:
        lang = self.lang(row)
        return " ".join(p["guideline"][lang] for p in principles)

    def contrast_prompt(self, row: dict, principles: list[dict], kind: str) -> list[dict]:
        lang = self.lang(row)
        system = render(
            f"constitution/{kind}.{lang}.jinja", guideline=self.guideline(row, principles)
        ).strip()
        prompt = [m for m in records.prompt_messages(row) if m["role"] != "system"]
        return [{"role": "system", "content": system}] + prompt

    def deviates_prompt(self, row: dict, principles: list[dict], reply: str) -> list[dict]:
        text = render(
            f"constitution/deviates.{self.lang(row)}.jinja",
            guideline=self.guideline(row, principles),
            instruction=records.instruction(row),
            response=reply,
        )
        return [{"role": "user", "content": text}]
