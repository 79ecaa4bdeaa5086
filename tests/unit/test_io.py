"""Readers (formats users have, bad-line quarantine) and atomic writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignfactory import io, records

ZH = "第一次去日本自由行，一共七天，预算有限，行程怎么安排比较合理？"


def write_lines(path: Path, lines: list) -> Path:
    """Each item: a dict (dumped as JSON), a str (written as is) or bytes (written as is)."""
    out = b""
    for item in lines:
        if isinstance(item, dict):
            out += json.dumps(item, ensure_ascii=False).encode("utf-8") + b"\n"
        elif isinstance(item, str):
            out += item.encode("utf-8") + b"\n"
        else:
            out += item + b"\n"
    path.write_bytes(out)
    return path


def read(paths, **kw) -> list[dict]:
    paths = paths if isinstance(paths, list) else [paths]
    return list(io.read_inputs(paths, **kw))


def split(items):
    rows = [r for r in items if not r["reject"]]
    rejects = [r for r in items if r["reject"]]
    return rows, rejects


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    # an assistant turn that came with the input carries finish_reason "input" (not generated)
    return {"role": "assistant", "content": text, "finish_reason": "input"}


# ---- formats -> messages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj, messages",
    [
        ({"instruction": "Name a prime."}, [user("Name a prime.")]),
        (  # Alpaca: input joined under the instruction, output becomes the assistant turn
            {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
            [user("Translate to French.\n\nGood morning"), assistant("Bonjour")],
        ),
        (  # Alpaca with empty input/output: nothing appended
            {"instruction": "Say hi.", "input": "", "output": ""},
            [user("Say hi.")],
        ),
        (
            {"instruction": "Q", "output": "A", "system": "Be terse."},
            [{"role": "system", "content": "Be terse."}, user("Q"), assistant("A")],
        ),
        (  # OpenAI messages, extra keys dropped
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U", "name": "n"}]},
            [{"role": "system", "content": "S"}, user("U")],
        ),
        (  # ShareGPT
            {
                "conversations": [
                    {"from": "system", "value": "S"},
                    {"from": "human", "value": "H"},
                    {"from": "gpt", "value": "G"},
                ]
            },
            [{"role": "system", "content": "S"}, user("H"), assistant("G")],
        ),
        (  # Qwen-style conversations: from user/assistant
            {"conversations": [{"from": "user", "value": "U"}, {"from": "assistant", "value": "A"}]},
            [user("U"), assistant("A")],
        ),
        (  # Firefly
            {"kind": "Couplet", "input": "上联：春风得意", "target": "下联：秋月无边"},
            [user("上联：春风得意"), assistant("下联：秋月无边")],
        ),
        ({"prompt": "P", "response": "R"}, [user("P"), assistant("R")]),
    ],
    ids=["plain", "alpaca", "alpaca-empty", "system", "openai", "sharegpt", "qwen", "firefly", "prompt"],
)
def test_to_messages_formats(obj, messages):
    assert io.to_messages(obj) == messages


@pytest.mark.parametrize(
    "obj, needle",
    [
        ({"question": "x"}, "'instruction', 'messages', 'conversations'"),
        ([1, 2], "expected a JSON object"),
        ({"instruction": "   "}, "'instruction' is empty"),
        ({"instruction": 5}, "'instruction' is a int"),
        ({"messages": []}, "'messages' is empty"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "no user turn"),
        ({"messages": [{"role": "robot", "content": "a"}]}, "messages[0] has no valid role"),
        ({"conversations": [{"from": "alien", "value": "v"}]}, "conversations[0].from='alien'"),
        ({"conversations": [{"from": "human"}]}, "conversations[0] has no 'value'"),
        ({"conversations": "not a list"}, "'conversations' is not a list"),
    ],
)
def test_to_messages_errors_say_what_is_wrong(obj, needle):
    with pytest.raises(ValueError) as e:
        io.to_messages(obj)
    assert needle in str(e.value)


# ---- file formats -------------------------------------------------------------------------------


def test_jsonl_rows_carry_source_file_and_line(tmp_path):
    p = write_lines(tmp_path / "seeds.jsonl", [{"instruction": "a"}, {"instruction": "b"}])
    rows = read(p)
    assert [r["messages"] for r in rows] == [[user("a")], [user("b")]]
    assert [r["source"] for r in rows] == [{"file": str(p), "line": 1}, {"file": str(p), "line": 2}]
    assert [r["id"] for r in rows] == [records.message_id([user("a")]), records.message_id([user("b")])]
    assert all(r["reject"] is None and r["lineage"] == {"parents": [], "stage": "read"} for r in rows)


def test_chinese_round_trips_unchanged_through_jsonl_json_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    obj = {"instruction": ZH, "output": "建议：东京三天，京都两天，大阪两天。"}
    expected = [user(ZH), assistant("建议：东京三天，京都两天，大阪两天。")]
    jl = write_lines(tmp_path / "zh.jsonl", [obj])
    arr = tmp_path / "zh.json"
    arr.write_text(json.dumps([obj], ensure_ascii=False), "utf-8")
    pqf = tmp_path / "zh.parquet"
    pq.write_table(pa.Table.from_pylist([obj]), pqf)
    for p in (jl, arr, pqf):
        (row,) = read(p)
        assert row["messages"] == expected, p


def test_json_array(tmp_path):
    p = tmp_path / "alpaca.json"
    data = [{"instruction": "a", "output": "A"}, {"nope": 1}, {"instruction": "c"}]
    p.write_text("\n  " + json.dumps(data, indent=2), "utf-8")  # leading whitespace is fine
    rows, rejects = split(read(p))
    assert [r["messages"] for r in rows] == [[user("a"), assistant("A")], [user("c")]]
    assert [r["source"]["line"] for r in rows] == [1, 3]  # 1-based element index
    (bad,) = rejects
    assert bad["source"] == {"file": str(p), "line": 2}
    assert bad["reject"]["reason"].startswith("bad_row")
    assert json.loads(bad["reject"]["raw"]) == {"nope": 1}


def test_dot_json_holding_jsonl_is_read_as_jsonl(tmp_path):
    p = write_lines(tmp_path / "lines.json", [{"instruction": "a"}, {"instruction": "b"}])
    assert [r["messages"] for r in read(p)] == [[user("a")], [user("b")]]


def test_json_array_that_does_not_parse_is_an_input_error(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('[{"instruction": "a"},', "utf-8")
    with pytest.raises(io.InputError, match="broken.json"):
        read(p)


def test_parquet_alpaca_and_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p1 = tmp_path / "alpaca.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"instruction": "i1", "input": "x", "output": "o1"},
                {"instruction": "i2", "input": None, "output": None},
            ]
        ),
        p1,
    )
    p2 = tmp_path / "chat.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}]
        ),
        p2,
    )
    rows = read([p1, p2])
    assert [r["messages"] for r in rows] == [
        [user("i1\n\nx"), assistant("o1")],
        [user("i2")],
        [user("u"), assistant("a")],
    ]
    assert [r["source"] for r in rows] == [
        {"file": str(p1), "line": 1},
        {"file": str(p1), "line": 2},
        {"file": str(p2), "line": 1},
    ]


def test_parquet_bad_row_is_quarantined(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "ok"}, {"instruction": None}]), p)
    rows, rejects = split(read(p))
    assert [r["messages"] for r in rows] == [[user("ok")]]
    assert rejects[0]["source"]["line"] == 2
    assert rejects[0]["reject"]["reason"].startswith("bad_row")


def test_datasets_save_to_disk_dir_and_datasetdict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(
        [{"instruction": ZH, "output": None}, {"instruction": "b", "output": "B"}]
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    rows = read(tmp_path / "ds")
    assert [r["messages"] for r in rows] == [[user(ZH)], [user("b"), assistant("B")]]
    assert rows[0]["source"] == {"file": str(tmp_path / "ds"), "line": 1}

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([{"conversations": [{"from": "human", "value": "h"}]}])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    (row,) = read(tmp_path / "dd")
    assert row["messages"] == [user("h")]
    assert row["source"]["file"] == f"{tmp_path / 'dd'}[train]"


def test_directory_that_is_not_a_datasets_dir_is_an_input_error(tmp_path):
    d = tmp_path / "plain_dir"
    d.mkdir()
    write_lines(d / "a.jsonl", [{"instruction": "a"}])
    with pytest.raises(io.InputError, match="plain_dir"):
        read(d)


def test_several_files_and_a_glob(tmp_path):
    for name, text in [("b.jsonl", "bee"), ("a.jsonl", "ay"), ("c.txt", "never")]:
        write_lines(tmp_path / name, [{"instruction": text}])
    paths = io.expand_paths([str(tmp_path / "*.jsonl")])
    assert paths == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]  # sorted, .txt not matched
    assert [r["messages"][0]["content"] for r in read(paths)] == ["ay", "bee"]
    explicit = io.expand_paths([str(tmp_path / "c.txt"), str(tmp_path / "a.jsonl")])
    assert explicit == [tmp_path / "c.txt", tmp_path / "a.jsonl"]  # explicit order is kept
    assert io.expand_paths(["*.jsonl"], base=tmp_path) == paths  # relative to base


# ---- whole-file errors --------------------------------------------------------------------------


def test_missing_file_is_an_input_error_naming_the_path(tmp_path):
    missing = tmp_path / "nope" / "seeds.jsonl"
    with pytest.raises(io.InputError) as e:
        io.expand_paths([str(missing)])
    assert str(missing) in str(e.value)
    assert "no such file" in str(e.value)


def test_glob_matching_nothing_is_an_input_error(tmp_path):
    with pytest.raises(io.InputError) as e:
        io.expand_paths([str(tmp_path / "*.parquet")])
    assert "no file matches" in str(e.value) and "*.parquet" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"[]"])
def test_empty_file_is_an_input_error_naming_the_file(tmp_path, content):
    good = write_lines(tmp_path / "good.jsonl", [{"instruction": "a"}])
    empty = tmp_path / "empty.json"
    empty.write_bytes(content)
    with pytest.raises(io.InputError) as e:
        read([good, empty])
    assert str(empty) in str(e.value) and "empty" in str(e.value)


# ---- bad lines ----------------------------------------------------------------------------------


def test_malformed_json_line_is_quarantined_with_reason_source_and_raw(tmp_path):
    p = write_lines(
        tmp_path / "s.jsonl", [{"instruction": "a"}, '{"instruction": "b",', {"instruction": "c"}]
    )
    rows, rejects = split(read(p))
    assert [r["messages"][0]["content"] for r in rows] == ["a", "c"]
    (bad,) = rejects
    assert bad["reject"]["stage"] == "read"
    assert bad["reject"]["reason"].startswith("bad_json")
    assert bad["source"] == {"file": str(p), "line": 2}
    assert bad["reject"]["raw"].strip() == '{"instruction": "b",'
    assert bad["messages"] == []


def test_row_without_instruction_is_rejected_naming_expected_keys(tmp_path):
    p = write_lines(tmp_path / "s.jsonl", [{"question": "what?", "answer": "that"}])
    (bad,) = read(p)
    reason = bad["reject"]["reason"]
    assert reason.startswith("bad_row")
    for key in ("instruction", "messages", "conversations", "prompt", "kind/input/target"):
        assert key in reason
    assert "['answer', 'question']" in reason  # the keys it did get
    assert json.loads(bad["reject"]["raw"]) == {"question": "what?", "answer": "that"}


def test_non_utf8_line_is_quarantined_and_neighbours_read(tmp_path):
    p = write_lines(
        tmp_path / "s.jsonl",
        [{"instruction": ZH}, b'{"instruction": "caf\xe9"}', {"instruction": "after"}],
    )
    rows, rejects = split(read(p))
    assert [r["messages"][0]["content"] for r in rows] == [ZH, "after"]
    (bad,) = rejects
    assert bad["reject"]["reason"].startswith("not_utf8")
    assert bad["source"]["line"] == 2
    assert "caf" in bad["reject"]["raw"]


@pytest.mark.parametrize("huge", [300, 3 * (1 << 20)], ids=["just-over", "several-MiB"])
def test_line_over_max_line_bytes_is_quarantined_and_next_line_read(tmp_path, huge):
    big = json.dumps({"instruction": "x" * huge})
    p = write_lines(tmp_path / "s.jsonl", [{"instruction": "before"}, big, {"instruction": "after"}, ""])
    rows, rejects = split(read(p, max_line_bytes=200))
    assert [r["messages"][0]["content"] for r in rows] == ["before", "after"]
    assert [r["source"]["line"] for r in rows] == [1, 3]
    (bad,) = rejects
    assert bad["reject"]["reason"].startswith("line_too_long")
    assert bad["source"]["line"] == 2
    size = int(bad["reject"]["reason"].split(":")[1].split()[0])
    assert size >= len(big)
    assert len(bad["reject"]["raw"]) <= io.RAW_KEEP_CHARS + 40  # kept, truncated


def test_line_of_exactly_max_line_bytes_is_read(tmp_path):
    line = json.dumps({"instruction": "y" * 50})
    p = write_lines(tmp_path / "s.jsonl", [line])
    (row,) = read(p, max_line_bytes=len(line))
    assert row["reject"] is None
    (bad,) = read(p, max_line_bytes=len(line) - 1)
    assert bad["reject"]["reason"].startswith("line_too_long")


def test_default_limit_quarantines_a_line_over_one_mib(tmp_path):
    big = json.dumps({"instruction": "z" * (io.MAX_LINE_BYTES + 10)})
    p = write_lines(tmp_path / "s.jsonl", [big, {"instruction": "ok"}])
    items = read(p)
    assert items[0]["reject"]["reason"].startswith("line_too_long")
    assert items[1]["messages"] == [user("ok")]


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_bytes(b'\n{"instruction": "a"}\n   \n\r\n{"instruction": "b"}\r\n\n')
    rows = read(p)
    assert [r["messages"][0]["content"] for r in rows] == ["a", "b"]
    assert [r["source"]["line"] for r in rows] == [2, 5]


def test_every_non_blank_line_is_accounted_for(tmp_path):
    lines = [
        {"instruction": "one"},
        "",
        "{broken",
        b'{"instruction": "\xff\xfe"}',
        json.dumps({"instruction": "w" * 500}),
        {"foo": "bar"},
        "   ",
        [1, 2, 3],
        {"messages": [{"role": "user", "content": ZH}]},
        {"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]},
    ]
    body = [json.dumps(x) if isinstance(x, list) else x for x in lines]
    p = write_lines(tmp_path / "s.jsonl", body)
    non_blank = [ln for ln in p.read_bytes().split(b"\n") if ln.strip()]
    items = read(p, max_line_bytes=200)
    rows, rejects = split(items)
    assert len(rows) + len(rejects) == len(non_blank) == 8
    assert len(rows) == 3
    assert sorted(r["reject"]["reason"].split(":")[0] for r in rejects) == [
        "bad_json",
        "bad_row",
        "bad_row",
        "line_too_long",
        "not_utf8",
    ]
    assert [i["source"]["line"] for i in items] == [1, 3, 4, 5, 6, 8, 9, 10]  # file order
    assert len({i["id"] for i in rejects}) == len(rejects)  # quarantine ids are unique per line


def test_raw_of_a_long_bad_line_is_truncated(tmp_path):
    long_bad = '{"instruction": "' + "a" * (io.RAW_KEEP_CHARS * 2)  # unterminated string, under the limit
    p = write_lines(tmp_path / "s.jsonl", [long_bad])
    (bad,) = read(p)
    raw = bad["reject"]["raw"]
    assert raw.startswith(long_bad[: io.RAW_KEEP_CHARS])
    assert raw.endswith(f"...[{len(long_bad) + 1} chars]")


def test_lone_surrogate_is_a_bad_row_not_a_crash(tmp_path):
    p = write_lines(tmp_path / "s.jsonl", ['{"instruction": "\\ud800"}', {"instruction": "ok"}])
    bad, good = read(p)
    assert bad["reject"]["reason"].startswith("bad_row")
    assert good["messages"] == [user("ok")]


@pytest.mark.parametrize(
    "line",
    ["[" * 100_000, '{"instruction": "x", "n": ' + "1" * 5000 + "}"],
    ids=["deep-nesting", "huge-int"],
)
def test_pathological_json_line_is_quarantined_not_fatal(tmp_path, line):
    p = write_lines(tmp_path / "s.jsonl", [line, {"instruction": "ok"}])
    bad, good = read(p)
    assert bad["reject"]["reason"].startswith("bad_json")
    assert good["messages"] == [user("ok")]


def test_utf8_bom_jsonl_first_line_is_read(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"instruction": ZH}, ensure_ascii=False).encode() + b"\n")
    (row,) = read(p)
    assert row["reject"] is None
    assert row["messages"] == [user(ZH)]


def test_utf8_bom_json_array_is_read(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "a"}, {"instruction": "b"}]).encode())
    rows = read(p)
    assert [r["messages"] for r in rows] == [[user("a")], [user("b")]]


# ---- writers ------------------------------------------------------------------------------------


def test_write_jsonl_atomic_round_trip_keeps_chinese_as_utf8(tmp_path):
    rows = [{"id": "1", "text": ZH}, {"id": "2", "text": "plain"}]
    p = tmp_path / "deep" / "dir" / "out.jsonl"
    io.write_jsonl_atomic(p, rows)
    assert io.read_jsonl(p) == rows
    assert ZH.encode("utf-8") in p.read_bytes()  # not \\u escapes
    assert [x.name for x in p.parent.iterdir()] == ["out.jsonl"]  # no temp file left


def test_write_atomic_replaces_whole_file(tmp_path):
    p = tmp_path / "f.bin"
    io.write_atomic(p, b"old content that is longer")
    io.write_atomic(p, b"new")
    assert p.read_bytes() == b"new"


def test_write_json_atomic(tmp_path):
    p = tmp_path / "m.json"
    io.write_json_atomic(p, {"name": ZH, "path": tmp_path})
    assert json.loads(p.read_text("utf-8")) == {"name": ZH, "path": str(tmp_path)}
