"""Stages on plain lists of rows, with a hand-built StageContext and the scripted engine."""

from __future__ import annotations

import json

import pytest

from alignfactory import records
from alignfactory.llm.base import Sampling, request_seed
from alignfactory.stages.assemble.export import Export
from alignfactory.stages.assemble.filter import Filter, language
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.dedup import Dedup, normalize
from alignfactory.stages.synthesize.generate import Generate
from tests.unit.scripted import ScriptedEngine, count_tokens, default_reply

ZH_Q = "光合作用和呼吸作用有什么区别和联系？"
ZH_A = "光合作用把光能转化为化学能并储存在有机物中，呼吸作用则分解有机物释放能量。两者互为原料和产物。"
EN_Q = "Write a polite email asking my landlord to fix the kitchen faucet."
EN_A = "Dear Mr. Smith, I hope you are well. The kitchen faucet has been dripping since Monday."


def row(instr: str, answer: str | None = None, line: int = 1, system: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": instr})
    if answer is not None:  # as the reader gives it: an assistant turn from the input is whole
        msgs.append(records.assistant(answer, records.FROM_INPUT))
    return records.new_row(msgs, {"file": "seeds.jsonl", "line": line})


def reasons(rows: list[dict]) -> list[str | None]:
    return [r["reject"]["reason"] if r["reject"] else None for r in rows]


# ---- filter -------------------------------------------------------------------------------------


def make_filter(**params) -> Filter:
    return Filter(Filter.Params(**params), StageContext("filter", 3))


def test_filter_keeps_a_good_row_untouched():
    rows = [row(EN_Q, EN_A), row(ZH_Q, ZH_A)]
    before = json.loads(json.dumps(rows))
    out = make_filter(min_chars=20)(rows)
    assert out == before  # nothing added, nothing rejected


@pytest.mark.parametrize(
    "answer, params, reason",
    [
        (None, {}, "empty_response"),
        ("   \n ", {}, "empty_response"),
        ("Ok.", {"min_chars": 20}, "too_short: 3 < 20 chars"),
        ("  Ok.  ", {"min_chars": 4}, "too_short: 3 < 4 chars"),  # stripped length
        ("x" * 50, {"max_chars": 40}, "too_long: 50 > 40 chars"),
    ],
)
def test_filter_length_rules(answer, params, reason):
    (out,) = make_filter(**params)([row(EN_Q, answer)])
    assert out["reject"] == {"stage": "filter", "reason": reason}


def test_filter_instruction_too_short():
    (out,) = make_filter(min_instruction_chars=10)([row("Hi", EN_A)])
    assert out["reject"]["reason"] == "instruction_too_short: 2 < 10 chars"


def test_filter_drop_truncated_is_gone_with_a_message_that_says_why():
    with pytest.raises(ValueError, match="drop_truncated was removed"):
        make_filter(drop_truncated=True)


@pytest.mark.parametrize(
    "instr, answer",
    [
        (EN_Q, "I'm sorry, but I can't help with that request."),
        (EN_Q, "I am sorry, I cannot assist with that."),
        (EN_Q, "Honestly? I can't help with that."),
        (EN_Q, "As an AI language model, I cannot have opinions."),
        (ZH_Q, "抱歉，我无法回答这个问题。"),
        (ZH_Q, "作为一个人工智能语言模型，我不能提供这方面的信息。"),
    ],
    ids=["en-sorry", "en-cannot", "en-cant-help", "en-as-an-ai", "zh-sorry", "zh-as-an-ai"],
)
def test_filter_rejects_refusals(instr, answer):
    (out,) = make_filter()([row(instr, answer)])
    assert out["reject"]["reason"].startswith("refusal: /")


def test_filter_does_not_flag_ordinary_text_mentioning_sorry():
    answer = "Say 'I'm sorry the faucet broke' in the first line, then ask for a repair date."
    assert make_filter()([row(EN_Q, answer)])[0]["reject"] is None


def test_filter_rejects_refusal_with_typographic_apostrophes():
    (out,) = make_filter()([row(EN_Q, "I’m sorry, but I can’t help with that.")])
    assert out["reject"] is not None and out["reject"]["reason"].startswith("refusal")


def test_language_detection():
    assert language(EN_A) == "en"
    assert language(ZH_A) == "zh"
    assert language("用Python写一个快速排序函数") == "zh"  # a few Latin letters in Chinese text
    assert language("42 + 7 = 49") == "other"


def test_filter_language_mismatch_zh_instruction_en_response():
    (out,) = make_filter()([row(ZH_Q, EN_A)])
    assert out["reject"]["reason"] == "language_mismatch: instruction zh, response en"
    (ok,) = make_filter(same_language=False)([row(ZH_Q, EN_A)])
    assert ok["reject"] is None
    (num,) = make_filter()([row(ZH_Q, "42")])  # "other" never mismatches
    assert num["reject"] is None


def test_filter_languages_allow_list():
    rows = [row(EN_Q, EN_A), row(ZH_Q, ZH_A)]
    out = make_filter(languages=["en"])(rows)
    assert reasons(out) == [None, "language: zh not in ['en']"]


def test_filter_rejects_only_the_bad_rows_in_a_batch_and_keeps_order():
    rows = [row(EN_Q, EN_A, 1), row(EN_Q, "", 2), row(ZH_Q, ZH_A, 3), row(ZH_Q, EN_A, 4)]
    out = make_filter()(rows)
    assert [r["source"]["line"] for r in out] == [1, 2, 3, 4]
    assert reasons(out) == [None, "empty_response", None, "language_mismatch: instruction zh, response en"]
    assert all(r["reject"]["stage"] == "filter" for r in out if r["reject"])


# ---- dedup --------------------------------------------------------------------------------------


def make_dedup(on: str = "instruction") -> Dedup:
    return Dedup(Dedup.Params(on=on), StageContext("dedup", 1))


def test_normalize():
    assert normalize("  ＨＥＬＬＯ　Ｗｏｒｌｄ！\t\n") == "hello world!"
    assert normalize("Straße") == normalize("STRASSE")  # casefold, not lower
    assert normalize("你好，世界") == "你好,世界"  # full-width comma -> ASCII


def test_dedup_case_whitespace_fullwidth_variants_keep_the_first():
    rows = [
        row("Hello world, how are you?", line=1),
        row("Something else entirely", line=2),
        row("hello   WORLD, how are you?", line=3),
        row("ＨＥＬＬＯ　ｗｏｒｌｄ， ｈｏｗ ａｒｅ ｙｏｕ？", line=4),
        row("\tHello world, how are you?\n", line=5),
        row("Something else entirely", "with an answer", line=6),
    ]
    first, other = rows[0]["id"], rows[1]["id"]
    out = make_dedup()(rows)
    assert [r["source"]["line"] for r in out] == [1, 2, 3, 4, 5, 6]  # order preserved, nothing dropped
    assert reasons(out) == [
        None,
        None,
        f"duplicate of {first}",
        f"duplicate of {first}",
        f"duplicate of {first}",
        f"duplicate of {other}",
    ]
    assert all(r["reject"]["stage"] == "dedup" for r in out[2:])
    assert out[3]["meta"]["dedup"] == {"duplicate_of": first}
    assert "dedup" not in out[0]["meta"]


def test_dedup_on_conversation_compares_the_whole_conversation():
    rows = [row(EN_Q, "Answer A"), row(EN_Q.upper(), "answer a"), row(EN_Q, "Answer B")]
    assert reasons(make_dedup("conversation")(json.loads(json.dumps(rows)))) == [
        None,
        f"duplicate of {rows[0]['id']}",
        None,
    ]
    by_instruction = make_dedup("instruction")(rows)
    assert reasons(by_instruction) == [None, f"duplicate of {rows[0]['id']}", f"duplicate of {rows[0]['id']}"]


def test_dedup_conversation_key_includes_roles():
    a = records.new_row([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], {})
    b = records.new_row([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}], {})
    assert reasons(make_dedup("conversation")([a, b])) == [None, None]


# ---- generate -----------------------------------------------------------------------------------


def make_generate(engine, n=None, seed=0, system=None, **sampling) -> Generate:
    ctx = StageContext("generate", 2, seed=seed, sampling=Sampling(**sampling))
    return Generate(Generate.Params(n=n, system=system), ctx, engine=engine)


def test_generate_n1_appends_assistant_turn_with_lineage_and_meta():
    engine = ScriptedEngine({EN_Q: EN_A})
    src = [row(EN_Q, line=1), row(ZH_Q, line=2)]
    ids = [r["id"] for r in src]
    out = make_generate(engine)(json.loads(json.dumps(src)))
    assert len(out) == 2
    first, second = out
    assert first["messages"] == [{"role": "user", "content": EN_Q}, records.assistant(EN_A, "stop")]
    assert second["messages"][-1] == records.assistant(default_reply(ZH_Q, 0), "stop")  # reason on the turn
    for child, parent_id, parent in zip(out, ids, src, strict=True):
        assert child["lineage"] == {"parents": [parent_id], "stage": "generate"}
        assert child["id"] == records.message_id(child["messages"]) != parent_id
        assert child["source"] == parent["source"]
        assert child["reject"] is None
        assert child["meta"]["generate"]["model"] == "scripted"
        assert child["meta"]["generate"]["sample"] == 0
        assert child["meta"]["generate"]["finish_reason"] == "stop"
        assert child["meta"]["generate"]["prompt_tokens"] == count_tokens(parent["messages"][-1]["content"])
    (call,) = engine.calls
    assert call["conversations"] == [[{"role": "user", "content": EN_Q}], [{"role": "user", "content": ZH_Q}]]
    assert call["sampling"].n == 1


def test_generate_replaces_an_existing_answer_and_sends_only_the_prompt():
    engine = ScriptedEngine({EN_Q: "New answer."})
    (out,) = make_generate(engine)([row(EN_Q, "Old answer.")])
    assert engine.calls[0]["conversations"] == [[{"role": "user", "content": EN_Q}]]
    assert [m["content"] for m in out["messages"]] == [EN_Q, "New answer."]


def test_generate_n3_yields_three_children_per_row_in_order():
    engine = ScriptedEngine({EN_Q: ["a one", "a two", "a three"]})
    src = [row(EN_Q, line=1), row(ZH_Q, line=2)]
    out = make_generate(engine, n=3)(json.loads(json.dumps(src)))
    assert len(out) == 6
    assert [r["meta"]["generate"]["sample"] for r in out] == [0, 1, 2, 0, 1, 2]
    assert [r["lineage"]["parents"] for r in out] == [[src[0]["id"]]] * 3 + [[src[1]["id"]]] * 3
    assert [records.response(r) for r in out[:3]] == ["a one", "a two", "a three"]
    assert [records.response(r) for r in out[3:]] == [default_reply(ZH_Q, k) for k in range(3)]
    assert len({r["id"] for r in out}) == 6
    assert engine.calls[0]["sampling"].n == 3
    # each sample is its own row with the prompt intact
    assert all(r["messages"][0] == {"role": "user", "content": r["messages"][0]["content"]} for r in out)


def test_generate_params_override_the_context_sampling():
    engine = ScriptedEngine()
    ctx = StageContext("generate", 2, sampling=Sampling(n=2, max_tokens=256, temperature=0.7, top_p=0.9))
    stage = Generate(Generate.Params(max_tokens=16, temperature=0.0), ctx, engine=engine)
    out = stage([row(EN_Q)])
    s = engine.calls[0]["sampling"]
    assert (s.n, s.max_tokens, s.temperature, s.top_p) == (2, 16, 0.0, 0.9)  # n from ctx, rest overridden
    assert len(out) == 2


def test_generate_per_request_seeds_differ_across_rows_and_are_stable():
    src = [row(f"Question number {i}", line=i) for i in range(4)]
    engine = ScriptedEngine()
    stage = make_generate(engine, seed=11)
    stage(json.loads(json.dumps(src)))
    stage(json.loads(json.dumps(src[::-1])))  # another call, other order
    first, second = engine.calls[0]["seeds"], engine.calls[1]["seeds"]
    assert len(set(first)) == 4
    assert second == first[::-1]  # a seed belongs to its row, not its position
    assert first == [request_seed(11, f"generate:{r['id']}") for r in src]
    assert all(0 <= s < 2**31 for s in first)
    other = ScriptedEngine()
    make_generate(other, seed=12)(json.loads(json.dumps(src)))
    assert set(other.calls[0]["seeds"]).isdisjoint(first)  # the spec seed changes every draw


def test_generate_token_counts_accumulate_on_the_stage():
    engine = ScriptedEngine({"one two three": "a b", "four five": ["c", "d e f"]})
    stage = make_generate(engine, n=2)
    stage([row("one two three")])
    assert (stage.tokens_in, stage.tokens_out) == (3, 4)
    stage([row("four five")])
    assert (stage.tokens_in, stage.tokens_out) == (3 + 2, 4 + 4)


def test_generate_finish_reason_feeds_filter():
    engine = ScriptedEngine(truncated={EN_Q})
    out = make_generate(engine)([row(EN_Q), row(ZH_Q)])  # on_truncated retry: cut again at 2x
    assert [r["meta"]["generate"]["finish_reason"] for r in out] == ["length", "stop"]
    filtered = make_filter(same_language=False)(out)
    assert reasons(filtered) == ["truncated: finish_reason 'length'", None]


def test_generate_system_prompt_goes_before_conversations_without_one():
    engine = ScriptedEngine()
    make_generate(engine, system="You are terse.")([row(EN_Q), row(ZH_Q, system="Answer in Chinese.")])
    convs = engine.calls[0]["conversations"]
    assert convs[0] == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": EN_Q}]
    assert convs[1] == [
        {"role": "system", "content": "Answer in Chinese."},
        {"role": "user", "content": ZH_Q},
    ]


# ---- export -------------------------------------------------------------------------------------


def make_export(tmp_path, **params) -> Export:
    return Export(Export.Params(**params), StageContext("export", 4, run_dir=tmp_path))


def test_export_writes_trl_sft_jsonl_parquet_and_dataset(tmp_path):
    import datasets
    import pyarrow.parquet as pq

    good = [row(EN_Q, EN_A, 1), row(ZH_Q, ZH_A, 2, system="请用中文回答。")]
    good[0]["meta"]["generate"] = {"model": "scripted"}
    no_answer = row("Unanswered?", line=3)
    rows = [good[0], no_answer, good[1]]
    out = make_export(tmp_path)(rows)
    assert [r["source"]["line"] for r in out] == [1, 3, 2]  # every row comes back
    assert reasons(out) == [None, "no_response", None]
    assert out[1]["reject"]["stage"] == "export"

    expected = [records.to_trl_sft(r) for r in good]  # role and content only
    sft = tmp_path / "sft"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]  # no temp dirs left
    assert sorted(p.name for p in sft.iterdir()) == ["dataset", "train.jsonl", "train.parquet"]
    jsonl = [json.loads(line) for line in (sft / "train.jsonl").read_text("utf-8").splitlines()]
    assert jsonl == expected
    assert ZH_A.encode("utf-8") in (sft / "train.jsonl").read_bytes()
    assert pq.read_table(sft / "train.parquet").to_pylist() == expected
    ds = datasets.load_from_disk(str(sft / "dataset"))
    assert ds.column_names == ["messages"]
    assert ds.to_list() == expected


def test_export_only_requested_files_and_rewrite_replaces(tmp_path):
    make_export(tmp_path)([row(EN_Q, EN_A)])
    make_export(tmp_path, files=["jsonl"])([row(ZH_Q, ZH_A)])
    sft = tmp_path / "sft"
    assert sorted(p.name for p in sft.iterdir()) == ["train.jsonl"]  # old export replaced whole
    assert json.loads((sft / "train.jsonl").read_text("utf-8"))["messages"][0]["content"] == ZH_Q
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]


def test_export_with_no_answered_rows_writes_empty_jsonl(tmp_path):
    out = make_export(tmp_path)([row(EN_Q)])
    assert reasons(out) == ["no_response"]
    assert (tmp_path / "sft" / "train.jsonl").read_bytes() == b""
    assert (tmp_path / "sft" / "train.parquet").exists()


def test_export_with_no_answered_rows_writes_a_loadable_empty_dataset(tmp_path):
    import datasets

    make_export(tmp_path)([row(EN_Q)])
    ds = datasets.load_from_disk(str(tmp_path / "sft" / "dataset"))
    assert len(ds) == 0 and ds.column_names == ["messages"]
