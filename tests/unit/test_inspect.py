"""alignfactory.inspect and the report's views on synthetic run directories that carry every column
the views read (tags, vocabulary, evolution lineage, judge/reward scores, sandbox verdicts, pairs,
duplicates), and on a bare one that carries none of them. make_run() is also used by the notebook
and browser tests, so the views are exercised where real small runs lack tags or pairs. Its shapes are
what the stages write: tag_normalize's meta and tags/ files come from the stage's own code (with a
hand-made embedder); judge, evolve and reward rows are written as their stage modules word them."""

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest

from alignfactory import inspect, io, records, report
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.evolve import OPERATIONS
from alignfactory.stages.curate.tag_normalize import TagNormalize, clean

SEEDS = [
    "Solve 12 * 7 and explain each step.",
    "写一首关于秋天的短诗。",
    "Write a Python function that reverses a string.",
    "List three causes of the French Revolution.",
    "解释什么是机器学习。",
    "Translate 'good morning' into Spanish.",
    "Give two tips for a job interview.",
    "What is the capital of Australia?",
    "Summarize the plot of Hamlet in two sentences.",
    "用三句话介绍长城。",
]
RAW_TAGS = {  # raw InsTag tags per seed (variants that tag_normalize merges)
    0: ["Math", "math calculation"],
    1: ["poetry", "creative writing"],
    2: ["coding", "Python programming"],
    3: ["history", "information retrieval"],
    4: ["machine learning", "explanation"],
    5: ["translation"],
    6: ["advice", "career"],
    7: ["information retrieval", "geography"],
    8: ["summarization", "literature"],
    9: ["history", "introduction"],
}
CANONICAL = {"math calculation": "math", "Math": "math", "Python programming": "coding", "career": "advice"}
SHARD = 8
EVOLVE_OPS = ["add_constraints", "deepening", "concretizing"]  # evolve.OPERATIONS names
EVOLVE_ELIMINATED = [  # reasons as Evolve.eliminated writes them
    "eliminated: copies_template: '#rewritten prompt#'",
    "eliminated: no_information_gain: equality check said 'Equal'",
]


class AliasEmbedder:
    """For the real tag_normalize stage: the tags CANONICAL merges share one vector, every other tag
    has its own (orthogonal), so semantic aggregation merges exactly CANONICAL's groups."""

    group = {clean(raw): canon for raw, canon in CANONICAL.items()}

    def encode(self, texts):
        keys = [self.group.get(t, t) for t in texts]
        dims = sorted(set(keys))
        return np.array([[float(k == d) for d in dims] for k in keys], dtype=np.float32)


def tag_normalize(root: Path, index: int, rows: list[dict]) -> None:
    """The stage's own code (summarize -> combine -> apply) puts meta.tag_normalize on the rows and
    writes tags/vocabulary.jsonl and tags/mapping.jsonl, so their shapes cannot drift from a real run."""
    params = TagNormalize.Params(association=False)  # rule + semantic: CANONICAL is the whole merge
    stage = TagNormalize(params, StageContext("tag_normalize", index, run_dir=root), AliasEmbedder())
    stage.apply(rows, stage.combine([stage.summarize(rows, 0)]), 0)


def _write_stage(root: Path, index: int, name: str, rows: list[dict], rows_in: int, tokens=(0, 0)) -> dict:
    d = root / "stages" / f"{index:02d}-{name}"
    d.mkdir(parents=True)
    io.write_atomic(d / "_FINGERPRINT", f"fp-{index}".encode())
    totals = {"rows_in": 0, "rows_out": 0, "rejected": 0, "tokens_in": 0, "tokens_out": 0}
    totals |= {"seconds": 0.0, "load_seconds": 0.0, "shards": 0}
    parts = [rows[i : i + SHARD] for i in range(0, max(len(rows), 1), SHARD)]
    for k, part in enumerate(parts):
        good = sum(not r["reject"] for r in part)
        first = k == 0  # whole-stage counters on the first shard, as corpus stages do
        stats = {
            "rows_in": rows_in if first else 0,
            "rows_out": good,
            "rejected": len(part) - good,
            "tokens_in": tokens[0] if first else 0,
            "tokens_out": tokens[1] if first else 0,
            "seconds": 2.0 if first else 0.0,
            "load_seconds": 1.0 if first else 0.0,
        }
        io.write_atomic(d / f"shard-{k:05d}.jsonl", io.jsonl_bytes([{"_shard": stats}] + part))
        for key in stats:
            totals[key] += stats[key]
        totals["shards"] += 1
    io.write_json_atomic(d / "_SUCCESS", totals)
    return {
        "index": index,
        "name": name,
        "dir": f"stages/{d.name}",
        "fingerprint": f"fp-{index}",
        "done": True,
    }


def make_run(root: Path, rich: bool = True) -> Path:
    """A run directory shaped like runs/<name>/: stages/ shards with headers, rejected/, sft/,
    preference/, tags/, manifest.json, README.md. Every input line ends exported or rejected once."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    lines = SEEDS + [SEEDS[0], SEEDS[1]]  # lines 11, 12: exact duplicates of lines 1, 2
    read = [
        records.new_row([{"role": "user", "content": t}], {"file": "seeds.jsonl", "line": i})
        for i, t in enumerate(lines, 1)
    ]
    read.append(io.quarantined({"file": "seeds.jsonl", "line": 13}, "bad_json: Expecting value", "{oops"))
    names = ["read"]
    outputs = [(copy.deepcopy(read), len(read), (0, 0))]

    def stage(name, rows, rows_in, tokens=(0, 0)):
        names.append(name)
        outputs.append((copy.deepcopy(rows), rows_in, tokens))  # frozen: later stages mutate rows
        return [r for r in rows if not r["reject"]]

    kept = [r for r in read if not r["reject"]]
    if rich:
        for r in kept:  # instag: raw tags with explanations
            seed = SEEDS.index(records.instruction(r))
            r["meta"]["instag"] = {"tags": [{"tag": t, "explanation": f"about {t}"} for t in RAW_TAGS[seed]]}
        kept = stage("instag", kept, len(kept), (400, 120))
        tag_normalize(root, len(names), kept)
        kept = stage("tag_normalize", kept, len(kept))
    first, out = {}, []
    for r in kept:  # dedup: exact duplicates of the instruction
        key = records.instruction(r)
        if key in first:
            r["meta"]["dedup"] = {"duplicate_of": first[key]}
            records.reject(r, "dedup", f"duplicate of {first[key]}")
        else:
            first[key] = r["id"]
        out.append(r)
    kept = stage("dedup", out, len(out))
    if rich:
        out = []
        for i, r in enumerate(kept):  # evolve: one or two rounds; two children eliminated
            child, ops = r, []
            for rnd in range(1, 3 if i < 4 else 2):
                op = EVOLVE_OPS[(i + rnd) % 3]
                ops.append(op)
                text = records.instruction(child) + f" ({op} {rnd})"
                child = records.derive(child, "evolve", [{"role": "user", "content": text}], {"round": rnd})
                child["lineage"] |= {"operation": op, "round": rnd, "operations": list(ops)}
            if i in (5, 6):  # an eliminated candidate's lineage has no operations (evolve.py)
                del child["lineage"]["operations"]
                records.reject(child, "evolve", EVOLVE_ELIMINATED[i - 5], raw="...")
            out.append(child)
        kept = stage("evolve", out, len(kept), (900, 700))
    out = []
    for r in kept:  # generate: one response each
        answer = f"Answer to: {records.instruction(r)} " + "detail " * rng.randint(3, 40)
        out.append(
            records.derive(
                r, "generate", records.with_response(r, answer), {"model": "embedded", "sample": 0}
            )
        )
    kept = stage("generate", out, len(kept), (600, 1500))
    if rich:
        for i, r in enumerate(kept):  # judge (pointwise, structured, min_score 4): as judge.py writes
            score = float([9, 7, 3, 8, 6, 5, 9, 2][i % 8])
            reply = json.dumps({"score": int(score), "reason": "fine"})
            r["meta"]["judge"] = {
                "scores": {"helpfulness": score},
                "reasons": {"helpfulness": "fine"},
                "raw": {"helpfulness": reply},
                "parse": {"helpfulness": "structured"},
                "score": score,
            }
            if score < 4.0:
                records.reject(r, "judge", f"below_min_score: {score} < 4.0")
        kept = stage("judge", kept, len(kept), (800, 200))
        for i, r in enumerate(kept):
            r["meta"]["reward"] = {"score": round(-1 + 0.37 * i, 6), "model": "/models/reward"}  # reward.py
        kept = stage("reward", kept, len(kept))
        for i, r in enumerate(kept):  # autoif-shaped verdicts and pairs
            statuses = ["PASS", "FAIL", "PASS", "TLE"][: 2 + i % 3]
            r["meta"]["autoif"] = {
                "functions": [{"status": "PASS", "kept": True}, {"status": "ERROR", "kept": False}],
                "statuses": statuses,
                "pass_rates": [1.0, 0.0, 0.5][: 1 + i % 3],
            }
            resp = records.response(r)
            r["pairs"] = [
                {
                    "chosen": resp,
                    "rejected": resp[: len(resp) // (2 + i % 2)] + " wrong",
                    "stage": "autoif",
                    "chosen_score": 1.0,
                    "rejected_score": [0.0, 0.5][i % 2],
                }
            ]
        kept = stage("autoif", kept, len(kept), (300, 400))
    stage("export", kept, len(kept))

    steps = []
    for index, (name, (rows, rows_in, tokens)) in enumerate(zip(names, outputs, strict=True)):
        step = _write_stage(root, index, name, rows, rows_in, tokens)
        steps.append(step | json.loads((root / step["dir"] / "_SUCCESS").read_text()))
    (root / "rejected").mkdir()
    for step, (rows, _, _) in zip(steps, outputs, strict=True):
        dropped = [r for r in rows if r["reject"]]
        if dropped:
            io.write_jsonl_atomic(root / "rejected" / f"{step['dir'].split('/')[1]}.jsonl", dropped)
    (root / "sft").mkdir()
    io.write_jsonl_atomic(root / "sft" / "train.jsonl", [records.to_trl_sft(r) for r in kept])
    if rich:
        (root / "preference").mkdir()
        prefs = [
            records.to_trl_preference(records.prompt_messages(r), p["chosen"], p["rejected"])
            for r in kept
            for p in r["pairs"]
        ]
        io.write_jsonl_atomic(root / "preference" / "train.jsonl", prefs)
    spec = {
        "name": "synthetic",
        "model": {"path": None},
        "prices": {"*": {"input_per_1k": 0.5, "output_per_1k": 2.0}},
        "stages": [
            {"name": n, "resources": {"num_gpus": 1.0 if n == "generate" else 0.0}} for n in names[1:]
        ],
    }
    manifest = {"name": "synthetic", "spec": spec, "code_version": "test", "seconds": 30.0, "stages": steps}
    io.write_json_atomic(root / "manifest.json", manifest)
    io.write_atomic(root / "README.md", inspect.dataset_card(root).encode())
    return root


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "rich")


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "bare", rich=False)


def test_not_a_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        inspect.final(tmp_path)


def test_every_input_line_ends_exported_or_rejected_once(rich):
    o = inspect.outcomes(rich)
    assert sorted(o["line"]) == list(range(1, 14))  # 13 lines read, each once
    rej = o[o["outcome"] == "rejected"].set_index("line")
    assert rej.loc[13, "stage"] == "read" and rej.loc[13, "reason"].startswith("bad_json")
    assert set(rej[rej["stage"] == "dedup"].index) == {11, 12}
    assert set(rej[rej["stage"] == "evolve"].index) == {6, 7}
    exported = o[o["outcome"] == "exported"]
    assert len(exported) == len(inspect.exported(rich, "sft"))
    # the rejected frame is rejected/ as written, with the reason's kind split off
    r = inspect.rejected(rich)
    assert sorted(r["line"]) == sorted(rej.index)
    assert set(r[r["stage"] == "judge"]["kind"]) == {"below_min_score"}


def test_leaves_are_each_rows_final_state(rich):
    leaves = inspect.leaves(rich)
    assert len(leaves) == 13  # 6 exported + 7 rejected: one final row per input line here (n = 1)
    assert sorted(int(inspect.source_key(r).split(":")[1]) for r in leaves) == list(range(1, 14))
    assert sum(not r["reject"] for r in leaves) == len(inspect.final_rows(rich))


def test_stage_counts_add_up(rich):
    s = inspect.stages(rich)
    assert (s["rows_in"] == s["rows_out"] + s["rejected"]).all()
    assert list(s["name"][:3]) == ["read", "instag", "tag_normalize"]
    gen = inspect.stage_rows(rich, "generate")
    assert len(gen) == s.set_index("name").loc["generate", "rows_out"]
    assert gen["response"].str.startswith("Answer to:").all()
    with pytest.raises(KeyError, match="no stage 'nope'"):
        inspect.stage_rows(rich, "nope")


def test_tags_vocabulary_and_mapping(rich):
    t = inspect.tags(rich)
    canon = t[t["kind"] == "canonical"]
    raw = t[t["kind"] == "raw"]
    assert "math" in set(canon["tag"]) and "Math" not in set(canon["tag"])
    assert {"Math", "math calculation"} <= set(raw["tag"])  # dict tags {"tag", "explanation"} read by name
    # the row that was rejected later keeps its tags, marked with why it was dropped
    assert canon["rejected"].notna().any() and canon["rejected"].isna().any()
    # one tag set per input line, however many rows (evolved, generated) carried it
    per_tag = canon.groupby("tag")["source"].nunique()
    assert per_tag["history"] == 2 and per_tag["math"] == 2  # math: line 1 and its duplicate, line 11
    assert canon.groupby(["source", "tag"]).size().max() == 1
    v = inspect.tag_vocabulary(rich).set_index("tag")
    assert v.loc["math", "members"] == ["Math", "math calculation"]
    assert v.loc["math", "count"] == 2 and v.loc["advice", "count"] == 1  # rows carrying the tag
    m = inspect.tag_mapping(rich).set_index("raw")  # every raw tag, with the step that last moved it
    assert {raw: m.loc[raw, "canonical"] for raw in CANONICAL} == CANONICAL
    assert m.loc["Math", "step"] == "rule" and m.loc["math calculation", "step"] == "semantic"
    assert m.loc["history", "step"] == "kept" and m.loc["history", "canonical"] == "history"


def test_lineage_evolution_depth(rich):
    e = inspect.lineage(rich)
    evo = e[e["stage"] == "evolve"]
    assert set(evo["operation"]) == set(EVOLVE_OPS) and set(EVOLVE_OPS) <= set(OPERATIONS)
    assert set(evo["round"]) == {1, 2}
    assert sorted(evo["rejected"].dropna()) == sorted(EVOLVE_ELIMINATED)
    d = inspect.depth(rich)
    assert len(d) == len(inspect.final_rows(rich))
    assert (d["depth"] >= 2).all()  # evolve, then generate, at least
    assert set(d["round"]) == {1, 2}


def test_scores_verdicts_pairs(rich):
    s = inspect.scores(rich)
    low = s[s["judge"] < 4]
    assert len(low) and low["rejected"].str.startswith("below_min_score").all()
    assert s[s["rejected"].isna()]["reward"].notna().all()
    v = inspect.verdicts(rich)
    assert set(v["what"]) == {"verifier", "response check"}
    assert v[v["status"] == "PASS"]["passed"].all() and not v[v["status"] == "TLE"]["passed"].any()
    p = inspect.pairs(rich)
    assert len(p) == len(inspect.exported(rich, "preference"))
    assert (p["length_ratio"] > 1).all()  # the synthetic rejected text is the chosen one cut short
    assert sorted(set(p["margin"])) == [0.5, 1.0]


def test_duplicates_cluster_under_the_kept_row(rich):
    d = inspect.duplicates(rich)
    assert d["cluster"].nunique() == 2
    for _, group in d.groupby("cluster"):
        assert group["kept"].sum() == 1 and len(group) == 2
        assert group["instruction"].nunique() == 1  # exact duplicates share the text


def test_missing_says_what_a_bare_run_lacks(rich, bare):
    assert inspect.missing(rich) == {}
    lacks = inspect.missing(bare)
    assert set(lacks) == {"tags", "vocabulary", "evolution", "scores", "verdicts", "pairs"}
    assert all(isinstance(v, str) and "\n" not in v for v in lacks.values())
    assert len(inspect.tags(bare)) == 0 and list(inspect.tags(bare).columns) == [
        "id",
        "source",
        "tag",
        "kind",
        "rejected",
    ]


def test_views_on_a_bare_run_say_what_is_missing_in_one_line(bare):
    for anchor, _, view, needs in report.VIEWS:
        if needs in inspect.missing(bare):
            parts = view(bare)
            assert len(parts) == 1 and isinstance(parts[0], str), anchor


def test_report_page_has_every_plot(rich):
    path = report.write(rich)
    page = path.read_text("utf-8")
    assert "this view failed" not in page
    for anchor, _, _, needs in report.VIEWS:
        if needs:  # every view whose data the rich run has draws a plot
            assert f'data-view="{anchor}"' in page, anchor
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained, offline
    readme = (rich / "README.md").read_text()
    assert readme.count(report.LINK) == 1
    report.write(rich)
    assert (rich / "README.md").read_text().count(report.LINK) == 1  # linked once, not per write
    assert inspect.dataset_card(rich).count(report.LINK) == 1  # a re-run's card keeps the link


def test_dataset_card_keeps_its_shape(rich):
    card = inspect.dataset_card(rich)
    assert card.startswith("# synthetic")
    assert "| 03-dedup | 12 | 10 | 2 |" in card
    assert "| judge | below_min_score |" in card
    assert "## preference/" in card
