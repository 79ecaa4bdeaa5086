"""instag: parsing messy model replies (EN and ZH), retries with new seeds, rejects with the raw text."""

from __future__ import annotations

import pytest

from alignfactory import records
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.instag import InsTag, TagParseError, parse_tags
from tests.unit.scripted import ScriptedEngine

MESSY = [
    # (reply, expected [(tag, explanation)], how)
    (
        '[{"tag": "email writing", "explanation": "asks for an email"}]',
        [("email writing", "asks for an email")],
        "json",
    ),
    (
        'Sure! Here are the tags:\n```json\n[{"tag": "math", "explanation": "arithmetic"},\n {"tag": "word problem", "explanation": "story"}]\n```\nHope this helps!',
        [("math", "arithmetic"), ("word problem", "story")],
        "json",
    ),
    (
        "[{'tag': 'poetry', 'explanation': 'a poem'}, {'tag': 'french', 'explanation': \"the user's language\"}]",
        [("poetry", "a poem"), ("french", "the user's language")],
        "json",
    ),
    (
        '[{"tag": "travel planning", "explanation": "itinerary"}]\n\nThese tags describe the query because it asks for a [plan].',
        [("travel planning", "itinerary")],
        "json",
    ),
    ('［｛"tag"："旅行规划"，"explanation"："安排行程"｝］', [("旅行规划", "安排行程")], "punctuation"),
    (
        "【{“tag”：“旅行规划”，“explanation”：“安排行程”}，{“tag”：“预算”，“explanation”：“预算有限”}】",
        [("旅行规划", "安排行程"), ("预算", "预算有限")],
        "punctuation",
    ),
    ('[{"tag": "写作", "explanation": "写一篇“春天”的文章"}]', [("写作", "写一篇“春天”的文章")], "json"),
    (  # cut off by max_tokens inside the third object
        '[{"tag": "python", "explanation": "code"}, {"tag": "recursion", "explanation": "fib"}, {"tag": "fibon',
        [("python", "code"), ("recursion", "fib")],
        "json",
    ),
    (  # cut off inside a string of the only object: the tag is picked out of the fragment
        '[{"tag": "email", "explanation": "This email is for a landlord.", "type": "text", "body": "Dear [Landlord',
        [("email", "This email is for a landlord.")],
        "salvaged",
    ),
    (
        'The tags are "tag": "cooking" and "tag": "baking", "explanation": "desserts"',
        [("cooking", ""), ("baking", "desserts")],
        "salvaged",
    ),
    ('["Python", "sorting", "python", ""]', [("Python", ""), ("sorting", "")], "json"),
    ('{"tags": [{"name": "translation", "reason": "to French"}]}', [("translation", "to French")], "json"),
    ('{"标签": "数学", "解释": "计算题"}', [("数学", "计算题")], "json"),
    ('{"tag": "a"}, {"tag": "b"}', [("a", ""), ("b", "")], "json"),
]


@pytest.mark.parametrize("reply, expected, how", MESSY)
def test_parse_messy_replies(reply, expected, how):
    tags, got_how = parse_tags(reply)
    assert [(t["tag"], t["explanation"]) for t in tags] == expected
    assert got_how == how


@pytest.mark.parametrize(
    "reply",
    [
        "The answer to this question is:",
        "[1, 2, 3]",
        "",
        '[{"explanation": "no tag key"}]',
        "光合作用是植物的过程。",
    ],
)
def test_unparseable_replies(reply):
    with pytest.raises(TagParseError):
        parse_tags(reply)


def test_limits_on_tag_count_and_length():
    reply = str([{"tag": f"t{i}", "explanation": ""} for i in range(20)] + [{"tag": "x" * 80}])
    tags, _ = parse_tags(reply, max_tags=5, max_chars=60)
    assert [t["tag"] for t in tags] == ["t0", "t1", "t2", "t3", "t4"]


EN = "Write a polite email to my landlord asking for the faucet to be fixed."
ZH = "第一次去日本自由行，一共七天，预算有限，行程怎么安排比较合理？"


def row(instr: str, line: int = 1) -> dict:
    return records.new_row([{"role": "user", "content": instr}], {"file": "seeds.jsonl", "line": line})


def stage(engine, **params) -> InsTag:
    return InsTag(InsTag.Params(**params), StageContext("instag", 2, seed=7), engine=engine)


def test_prompt_language_examples_and_tags_in_meta():
    engine = ScriptedEngine(
        {
            f'Tag the intentions of this user query: what it asks for, its topic, task type and constraints. Reply with a JSON list of {{"tag", "explanation"}} objects, short tags, one short explanation each.\n\nQuery: {EN}': '[{"tag": "email writing", "explanation": "an email"}]'
        },
        rule=lambda conv, k, seed: '```json\n[{"tag": "旅行规划", "explanation": "行程"}]\n```',
        constrains=False,  # free text: the fenced reply is parsed by parse_tags
    )
    out = stage(engine)([row(EN, 1), row(ZH, 2)])
    assert [r["reject"] for r in out] == [None, None]
    assert out[0]["meta"]["instag"]["tags"] == [{"tag": "email writing", "explanation": "an email"}]
    assert out[1]["meta"]["instag"] | {"raw": None} == {
        "tags": [{"tag": "旅行规划", "explanation": "行程"}],
        "language": "zh",
        "parse": "json",
        "path": "free_text: scripted engine set to not constrain",
        "finish_reason": "stop",
        "attempts": 1,
        "retried": False,
        "raw": None,
    }
    (call,) = engine.calls
    en, zh = call["conversations"]
    # two worked examples as earlier turns, then the query; the Chinese row gets the Chinese ones
    assert [m["role"] for m in en] == ["user", "assistant", "user", "assistant", "user"]
    assert en[1]["content"].startswith('[{"tag": "poetry writing"')
    assert zh[-1]["content"].startswith("为下面的用户问题标注意图标签") and zh[-1]["content"].endswith(ZH)
    assert "宠物护理" in zh[1]["content"]
    assert call["sampling"].max_tokens == 96 and call["sampling"].temperature == 0.2


def test_retries_use_new_seeds_then_reject_with_the_raw_text():
    replies = iter(["no idea", '[{"tag": "email writing", "explanation": "x"}]'])
    engine = ScriptedEngine(
        rule=lambda conv, k, seed: "I cannot tag this." if ZH in conv[-1]["content"] else next(replies),
        constrains=False,
    )
    out = stage(engine, retries=2)([row(EN, 1), row(ZH, 2)])
    assert out[0]["reject"] is None and out[0]["meta"]["instag"]["attempts"] == 2
    assert out[1]["reject"] == {
        "stage": "instag",
        "reason": "unparseable: no JSON list of tags after 3 attempts",
        "raw": "I cannot tag this.",
    }
    assert out[1]["meta"]["instag"]["raws"] == ["I cannot tag this."] * 3
    assert [len(c["conversations"]) for c in engine.calls] == [2, 2, 1]  # only failures are retried
    seeds = [c["seeds"][-1] for c in engine.calls]  # the ZH row's seed per attempt
    assert len(set(seeds)) == 3


def test_copying_an_example_is_retried():
    copied = '[{"tag": "python programming", "explanation": "Python code"}, {"tag": "sorting", "explanation": "sort a list"}, {"tag": "immutability", "explanation": "keep the original list"}]'
    engine = ScriptedEngine(rule=lambda conv, k, seed: copied)
    out = stage(engine, retries=1)([row(EN)])
    assert out[0]["reject"]["reason"] == "unparseable: copied an example's tags after 2 attempts"


def test_all_user_turns_are_tagged():
    engine = ScriptedEngine(rule=lambda conv, k, seed: '["x"]')
    r = records.new_row(
        [
            {"role": "user", "content": "Plan a trip."},
            {"role": "assistant", "content": "Where to?"},
            {"role": "user", "content": "Japan, 7 days."},
        ],
        {"file": "f", "line": 1},
    )
    stage(engine)([r])
    assert engine.calls[0]["conversations"][0][-1]["content"].endswith(
        "Query: Plan a trip.\n\nJapan, 7 days."
    )


def test_bad_example_files_name_the_file_and_line(tmp_path, monkeypatch):
    import alignfactory.stages.curate.instag as mod

    monkeypatch.setattr(mod, "RUBRICS", tmp_path)
    (tmp_path / "ex.jsonl").write_text('{"query": "q", "tags": []}\n{"query": "q"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"ex.jsonl:2: bad example \(KeyError"):
        stage(ScriptedEngine(), examples={"en": "ex.jsonl"})
    with pytest.raises(ValueError, match=r"params.examples.zh: .*missing.jsonl not found"):
        stage(ScriptedEngine(), examples={"zh": "missing.jsonl"})
