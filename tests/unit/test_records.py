"""The row: content-derived ids, lineage, rejects, and the TRL views."""

from __future__ import annotations

import copy

from alignfactory import records

USER = {"role": "user", "content": "Explain recursion in one sentence."}
ANSWER = {"role": "assistant", "content": "A function that calls itself on a smaller input."}


def test_id_is_16_hex_and_stable_across_calls_and_dict_key_order():
    a = records.message_id([USER, ANSWER])
    b = records.message_id([{"content": USER["content"], "role": "user"}, dict(ANSWER)])
    assert a == b
    assert len(a) == 16 and int(a, 16) >= 0
    # pinned: ids must not drift between releases (sha256 of [[role, content], ...] as JSON, 16 hex)
    assert records.message_id([{"role": "user", "content": "hi"}]) == "675b797826f34c78"
    # keys other than role/content do not enter the id
    assert records.message_id([{"role": "user", "content": "hi", "name": "x"}]) == "675b797826f34c78"


def test_id_depends_on_content_and_role():
    base = records.message_id([USER])
    assert records.message_id([{"role": "user", "content": USER["content"] + " "}]) != base
    assert records.message_id([{"role": "system", "content": USER["content"]}]) != base
    assert records.message_id([USER, ANSWER]) != base


def test_id_of_chinese_text_is_stable_and_distinct():
    zh = [{"role": "user", "content": "光合作用和呼吸作用有什么区别？"}]
    assert records.message_id(zh) == records.message_id(copy.deepcopy(zh))
    assert records.message_id(zh) != records.message_id([{"role": "user", "content": "光合作用"}])


def test_new_row_shape():
    row = records.new_row([USER], {"file": "seeds.jsonl", "line": 3})
    assert row == {
        "id": records.message_id([USER]),
        "messages": [USER],
        "source": {"file": "seeds.jsonl", "line": 3},
        "lineage": {"parents": [], "stage": "read"},
        "meta": {},
        "reject": None,
    }


def test_derive_sets_new_id_parent_and_stage_and_leaves_parent_untouched():
    parent = records.new_row([USER], {"file": "f", "line": 1})
    parent["meta"]["tag"] = {"tags": ["cs"]}
    before = copy.deepcopy(parent)
    child = records.derive(parent, "generate", [USER, ANSWER], {"model": "m"})
    assert child["id"] == records.message_id([USER, ANSWER]) != parent["id"]
    assert child["lineage"] == {"parents": [parent["id"]], "stage": "generate"}
    assert child["messages"] == [USER, ANSWER]
    assert child["meta"] == {"tag": {"tags": ["cs"]}, "generate": {"model": "m"}}
    assert child["source"] == parent["source"]
    assert child["reject"] is None
    assert parent == before  # the parent is not mutated (deep copy)
    child["meta"]["tag"]["tags"].append("x")
    assert parent["meta"]["tag"]["tags"] == ["cs"]


def test_derive_clears_reject_and_without_meta_adds_no_stage_key():
    parent = records.reject(records.new_row([USER], {}), "filter", "too_short")
    child = records.derive(parent, "evolve", [{"role": "user", "content": "Harder."}])
    assert child["reject"] is None
    assert "evolve" not in child["meta"]


def test_reject_shape_with_and_without_raw():
    row = records.new_row([USER], {})
    out = records.reject(row, "filter", "too_short: 3 < 20 chars")
    assert out is row
    assert row["reject"] == {"stage": "filter", "reason": "too_short: 3 < 20 chars"}
    records.reject(row, "evolve", "unparseable", raw="<<garbage>>")
    assert row["reject"] == {"stage": "evolve", "reason": "unparseable", "raw": "<<garbage>>"}


def test_prompt_messages_strips_only_a_final_assistant_turn_without_mutating():
    sys_msg = {"role": "system", "content": "Be brief."}
    row = {"messages": [sys_msg, USER, ANSWER]}
    assert records.prompt_messages(row) == [sys_msg, USER]
    assert row["messages"] == [sys_msg, USER, ANSWER]
    no_answer = {"messages": [sys_msg, USER]}
    got = records.prompt_messages(no_answer)
    assert got == [sys_msg, USER]
    got.append(ANSWER)
    assert no_answer["messages"] == [sys_msg, USER]  # a copy, not the row's own list
    multi = {"messages": [USER, ANSWER, {"role": "user", "content": "And in Chinese?"}, ANSWER]}
    assert records.prompt_messages(multi) == multi["messages"][:3]
    assert records.prompt_messages({"messages": []}) == []


def test_instruction_and_response():
    follow = {"role": "user", "content": "Shorter, please."}
    row = {"messages": [USER, ANSWER, follow]}
    assert records.instruction(row) == "Shorter, please."
    assert records.response(row) is None
    row = {"messages": [USER, ANSWER]}
    assert records.response(row) == ANSWER["content"]
    assert records.instruction({"messages": [{"role": "system", "content": "s"}]}) == ""
    assert records.response({"messages": []}) is None


def test_with_response_replaces_the_final_assistant_turn():
    row = {"messages": [USER, ANSWER]}
    new = {"role": "assistant", "content": "new", "finish_reason": "stop"}
    assert records.with_response(row, "new", "stop") == [USER, new]
    x = {"role": "assistant", "content": "x", "finish_reason": None}
    assert records.with_response({"messages": [USER]}, "x") == [USER, x]


def test_the_finish_reason_travels_with_the_final_text():
    row = {"messages": [USER, records.assistant("cut", "length")]}
    assert records.response_finish_reason(row) == "length" and not records.response_complete(row)
    row["messages"] = records.with_response(row, "whole", "stop")  # a later stage replaced the text
    assert records.response_finish_reason(row) == "stop" and records.response_complete(row)
    assert records.response_complete({"messages": [USER, records.assistant("given", "input")]})
    # nobody recorded a reason (or an engine that returned none): incomplete, never accepted
    assert not records.response_complete({"messages": [USER, {"role": "assistant", "content": "a"}]})
    assert records.message_id(row["messages"]) == records.message_id([USER, ANSWER | {"content": "whole"}])


def test_to_trl_sft_is_conversational_messages_only():
    row = records.new_row(
        [{"role": "user", "content": "写一首诗", "name": "u1"}, {**ANSWER, "weight": 1}],
        {"file": "f", "line": 1},
    )
    row["meta"]["generate"] = {"model": "m"}
    out = records.to_trl_sft(row)
    assert out == {
        "messages": [
            {"role": "user", "content": "写一首诗"},
            {"role": "assistant", "content": ANSWER["content"]},
        ]
    }


def test_to_trl_preference_shape():
    prompt = [{"role": "system", "content": "s", "x": 1}, USER]
    out = records.to_trl_preference(prompt, "good", "bad")
    assert out == {
        "prompt": [{"role": "system", "content": "s"}, USER],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    assert set(out) == {"prompt", "chosen", "rejected"}


def test_discarded_candidate_is_a_reject_the_rejecting_stage_made_itself():
    parent = {"id": "p", "lineage": {"parents": [], "stage": "read"}, "reject": None}
    evolved = {"id": "c", "lineage": {"parents": ["p"], "stage": "evolve"}, "reject": None}
    assert not records.discarded_candidate(parent) and not records.discarded_candidate(evolved)
    records.reject(evolved, "evolve", "eliminated: copies_template")
    assert records.discarded_candidate(evolved)  # an eliminated evolution: its parent goes on
    generated = {"id": "g", "lineage": {"parents": ["p"], "stage": "generate"}, "reject": None}
    records.reject(generated, "filter", "too_short")
    assert not records.discarded_candidate(generated)  # a later stage's reject is the line's outcome
    records.reject(parent, "dedup", "duplicate of x")
    assert not records.discarded_candidate(parent)  # no parents: an input row itself
