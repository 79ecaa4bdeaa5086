"""decontaminate on plain lists: benchmark items planted verbatim and lightly edited, EN and ZH,
in JSONL and Parquet; rejects name the file and item; bad benchmark input fails early and clearly."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from alignfactory import records, run
from alignfactory.spec import SpecError, validate
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.decontaminate import Decontaminate

GSM = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
GSM_ANSWER = "Natalia sold 48 / 2 = 24 clips in May and 48 + 24 = 72 clips altogether in April and May."
ZH_ITEM = "小明有五个苹果，他给了小红两个，又从妈妈那里得到了三个，请问小明现在一共有几个苹果？"
SHORT = "Name the largest planet in our solar system please"  # 9 words: matched whole
TINY = "What is two plus two?"  # 5 words: too generic, skipped
PARQ = (
    "A train leaves the station at nine in the morning travelling at sixty miles per hour towards "
    "a city that is one hundred and eighty miles away; when does it arrive?"
)


@pytest.fixture
def bench(tmp_path) -> Path:
    path = tmp_path / "gsm_test.jsonl"
    items = [
        {
            "question": "Unrelated filler question about how many legs a spider has in total, counted twice.",
            "answer": "8",
        },
        {"question": GSM, "answer": GSM_ANSWER},
        {"question": ZH_ITEM, "answer": "六个"},
        {"question": SHORT, "answer": "Jupiter"},
        {"question": TINY, "answer": "4"},
    ]
    path.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), "utf-8")
    return path


@pytest.fixture
def parquet(tmp_path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "trains.parquet"
    pq.write_table(pa.table({"prompt": ["Some other prompt entirely about apples and pears.", PARQ]}), path)
    return path


def row(text: str, line: int, answer: str | None = None) -> dict:
    msgs = [{"role": "user", "content": text}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return records.new_row(msgs, {"file": "seeds.jsonl", "line": line})


def stage(benchmarks, **params) -> Decontaminate:
    return Decontaminate(
        Decontaminate.Params(benchmarks=benchmarks, **params), StageContext("decontaminate", 6)
    )


def verdicts(rows):
    return {r["source"]["line"]: (r["reject"]["reason"] if r["reject"] else None) for r in rows}


def planted() -> list[dict]:
    texts = [
        ("Solve this word problem step by step: " + GSM, None),  # 1 verbatim inside a longer prompt
        (GSM.replace("Natalia", "Maria").replace("April", "June"), None),  # 2 lightly edited
        (
            "How many clips did Natalia sell in total? She sold some in April.",
            None,
        ),  # 3 shares words, no 13-gram
        ("请一步一步解答：" + ZH_ITEM, None),  # 4 ZH verbatim
        (ZH_ITEM.replace("小红", "小刚"), None),  # 5 ZH lightly edited
        ("Write a poem about the sea at night.", "Here: " + GSM_ANSWER),  # 6 answer leaked in the response
        ("Quick quiz: name the largest planet in our solar system, please!", None),  # 7 short item, whole
        ("What is two plus two?", None),  # 8 tiny item: not judged
        ("Explain photosynthesis in simple terms for a ten year old child who loves plants.", None),  # 9
        (PARQ.replace("nine", "ten"), None),  # 10 parquet item, edited
    ]
    return [row(t, i, a) for i, (t, a) in enumerate(texts, 1)]


def test_planted_items_verbatim_and_edited_are_rejected_naming_file_and_item(bench, parquet):
    s = stage([{"path": str(bench), "field": "question", "answer_field": "answer"}, str(parquet)])
    got = verdicts(s(planted()))
    assert [k for k, v in got.items() if v is None] == [3, 8, 9]
    assert got[1].startswith("contaminated: ") and got[1].endswith(
        "13-word n-grams with gsm_test.jsonl line 2 (question)"
    )
    assert got[2].endswith("with gsm_test.jsonl line 2 (question)")
    assert got[4].endswith("13-char n-grams with gsm_test.jsonl line 3 (question)")
    assert got[5].endswith("with gsm_test.jsonl line 3 (question)")
    assert got[6].endswith("with gsm_test.jsonl line 2 (answer)")
    assert got[7] == "contaminated: contains the whole item (9 words) gsm_test.jsonl line 4 (question)"
    assert got[10].endswith("13-word n-grams with trains.parquet row 1 (prompt)")
    verbatim, edited = int(got[1].split()[1]), int(got[2].split()[1])
    assert verbatim > edited >= 1  # an edit removes the n-grams that cross it


def test_row_meta_carries_the_match(bench):
    out = stage([{"path": str(bench), "field": "question"}])(planted()[:1])
    meta = out[0]["meta"]["decontaminate"]
    assert meta["benchmark"] == "gsm_test.jsonl" and meta["item"] == "line 2" and meta["field"] == "question"
    assert meta["ngram"] in " ".join(GSM.lower().replace(",", "").replace("?", "").replace(".", "").split())


def test_min_matches_and_instruction_only(bench):
    rows = planted()
    strict = verdicts(stage([{"path": str(bench), "field": "question"}], min_matches=10)(copy.deepcopy(rows)))
    assert strict[1] is not None and strict[2] is None  # the edited copy shares fewer than 10 13-grams
    instr = verdicts(
        stage([{"path": str(bench), "field": "question", "answer_field": "answer"}], on="instruction")(rows)
    )
    assert instr[6] is None  # the leaked answer is in the response, not the instruction


def test_embedding_similarity_catches_a_paraphrase(bench):
    para = row("Natalia sold 48 clips to friends in April and half that number in May. How many in total?", 1)
    off = stage([{"path": str(bench), "field": "question"}])([copy.deepcopy(para)])
    assert off[0]["reject"] is None
    on = stage([{"path": str(bench), "field": "question"}], embedding=0.8)([para])
    assert on[0]["reject"]["reason"].startswith("contaminated: embedding cosine 0.")
    assert on[0]["reject"]["reason"].endswith("with gsm_test.jsonl line 2 (question)")


def test_no_benchmarks_is_a_noop_with_a_note(caplog):
    rows = planted()
    with caplog.at_level(logging.WARNING, logger="alignfactory"):
        out = stage([])(copy.deepcopy(rows))
    assert all(r["reject"] is None for r in out) and len(out) == len(rows)
    assert "no benchmark files listed" in caplog.text


def test_missing_benchmark_file_fails_at_spec_validation(tmp_path, bench):
    with pytest.raises(ValidationError, match="benchmark file not found: .*nope.jsonl"):
        Decontaminate.Params(benchmarks=[str(tmp_path / "nope.jsonl")])
    tree = {
        "name": "t",
        "input": {"path": str(bench)},
        "stages": [
            {"name": "decontaminate", "params": {"benchmarks": [{"path": str(tmp_path / "nope.jsonl")}]}}
        ],
    }
    with pytest.raises(
        SpecError, match=r"stages\.0\.params\.benchmarks\.0\.path: Value error, benchmark file not found"
    ):
        validate(tree)
    (tmp_path / "b.txt").write_text("plain text\n")
    with pytest.raises(ValidationError, match="b.txt: expected one of .jsonl, .json, .parquet"):
        Decontaminate.Params(benchmarks=[str(tmp_path / "b.txt")])


def test_bad_benchmark_rows_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "fine question with enough words to be indexed by the stage"}\n{"q": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2: field 'question' is missing"):
        stage([{"path": str(bad), "field": "question"}])(planted()[:1])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "x"\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:1: bad JSON"):
        stage([{"path": str(broken), "field": "question"}])(planted()[:1])


def test_shards_summarized_apart_equal_the_plain_call(bench):
    s = stage([{"path": str(bench), "field": "question", "answer_field": "answer"}])
    plain = s(planted())
    shards = [planted()[i : i + 4] for i in range(0, 10, 4)]
    plan = s.combine([s.summarize(sh, k) for k, sh in enumerate(shards)])
    split = [r for k, sh in enumerate(shards) for r in s.apply(sh, plan, k)]
    assert [(r["id"], r["reject"]) for r in split] == [(r["id"], r["reject"]) for r in plain]


def test_benchmark_file_identity_is_in_the_fingerprint(tmp_path, bench):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"instruction": "q"}) + "\n")
    tree = {
        "name": "t",
        "input": {"path": str(seeds)},
        "stages": [
            {"name": "decontaminate", "params": {"benchmarks": [{"path": str(bench), "field": "question"}]}}
        ],
    }
    before = run.plan(validate(tree), tmp_path / "run")[1].fingerprint
    with open(bench, "a", encoding="utf-8") as f:
        f.write(json.dumps({"question": "one more benchmark question appended to the file here"}) + "\n")
    assert run.plan(validate(tree), tmp_path / "run")[1].fingerprint != before


# ---- what is checked (issue 15 item 7): responses, every user turn; what the plan records


def test_on_response_checks_the_final_assistant_turn_and_rejects_a_row_without_one(bench):
    rows = [
        row(GSM, 1, "It is 72 clips."),  # a benchmark prompt, a clean answer: the response check passes it
        row("Write a poem about the sea at night.", 2, "Here: " + GSM_ANSWER),  # leaked answer
        row("A question nobody answered yet, about the sea at night.", 3),  # no response to check
    ]
    got = verdicts(
        stage([{"path": str(bench), "field": "question", "answer_field": "answer"}], on="response")(rows)
    )
    assert got[1] is None
    assert got[2].startswith("contaminated: ") and got[2].endswith("gsm_test.jsonl line 2 (answer)")
    assert got[3] == "unchecked: no response to check (on: response)"


def test_on_instruction_checks_every_user_turn_not_only_the_last(bench):
    # fails on the old code: it checked only the last user turn ("continue")
    msgs = [
        {"role": "user", "content": GSM},
        {"role": "assistant", "content": "Let me think."},
        {"role": "user", "content": "continue"},
    ]
    r = records.new_row(msgs, {"file": "chat.jsonl", "line": 1})
    out = stage([{"path": str(bench), "field": "question"}], on="instruction")([r])
    assert out[0]["reject"]["reason"].endswith("gsm_test.jsonl line 2 (question)")


def test_plan_records_what_was_checked_for_the_card(bench):
    import hashlib

    s = stage([{"path": str(bench), "field": "question", "answer_field": "answer"}], on="response")
    rows = planted()
    plan = s.combine([s.summarize(rows[:4], 0), s.summarize(rows[4:], 1)])
    check = plan["check"]
    assert check["on"] == "response" and check["ngram"] == 13 and check["rows_checked"] == 10
    # only row 6 has a response (and it leaks the answer); the other 9 have none to check
    assert check["rows_contaminated"] == 1 and check["rows_unchecked"] == 9
    (f,) = check["files"]
    assert f["sha256"] == hashlib.sha256(bench.read_bytes()).hexdigest()
    # 5 items; 10 texts: 7 indexed, 3 too short ("What is two plus two?", "4", "六个" ... "Jupiter", "8")
    assert f["items"] == 5 and f["fields"] == ["question", "answer"]
    assert f["texts_indexed"] + f["texts_skipped_short"] == 10


SHIPPED = Path(__file__).resolve().parents[2] / "pipelines" / "benchmarks"


def test_shipped_benchmark_files_load_and_match_their_readme():
    import hashlib

    readme = (SHIPPED / "README.md").read_text("utf-8")
    files = sorted(SHIPPED.glob("*.jsonl"))
    assert files, "pipelines/benchmarks/ ships no benchmark file"
    for path in files:
        assert hashlib.sha256(path.read_bytes()).hexdigest() in readme, f"{path.name}: sha256 not in README"
        n = sum(1 for line in path.open(encoding="utf-8") if line.strip())
        assert f"| `{path.name}` | {n} |" in readme, f"{path.name}: row count {n} not in README"
    s = stage(
        [{"path": str(SHIPPED / "humaneval.jsonl"), "field": "prompt", "answer_field": "canonical_solution"}]
    )
    plan = s.combine([s.summarize([], 0)])
    (f,) = plan["check"]["files"]
    assert f["items"] == 164 and f["texts_indexed"] > 300
    # a HumanEval prompt pasted into a request is caught
    he = json.loads((SHIPPED / "humaneval.jsonl").read_text("utf-8").splitlines()[0])
    out = s([row("Please complete this function:\n" + he["prompt"], 1)])
    assert out[0]["reject"]["reason"].endswith("humaneval.jsonl line 1 (prompt)")


def test_on_response_checks_both_sides_of_every_pair(bench):
    # the original answer a revision replaced lives on only as a pair's rejected side: still training data
    r = row("Write a poem about the sea at night.", 1, "A clean revised poem about the sea.")
    r["pairs"] = [{"chosen": "A clean revised poem about the sea.", "rejected": "Here: " + GSM_ANSWER}]
    out = stage([{"path": str(bench), "field": "question", "answer_field": "answer"}], on="response")([r])
    assert out[0]["reject"]["reason"].endswith("gsm_test.jsonl line 2 (answer)")
