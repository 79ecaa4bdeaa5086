"""dedup exact / minhash / semantic on plain lists: planted exact, near and paraphrase duplicates in
English and Chinese; which rows are kept, which rejected, naming the kept id and the similarity."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from alignfactory import records
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.dedup import Dedup, band_keys32, group_pairs, resolve_clusters, shingles

STORY = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle that was sent "
    "fifty years ago by a girl living on the other side of the ocean and decides to answer it"
)
EMAIL = (
    "Draft a polite email to my landlord explaining that the kitchen faucet has been leaking for two "
    "weeks and asking whether a plumber could come by on Thursday afternoon to repair it"
)
ZH = "请写一篇关于秋天的散文，描写落叶、稻田、远山和傍晚的炊烟，表达对家乡的思念，字数在五百字左右。"
ZH_OTHER = "请写一篇关于春天的诗歌，描写桃花、细雨、燕子和清晨的薄雾，表达对新生活的期待，不少于十二行。"
MIXED = "用Python写一个函数，读取一个CSV文件，统计每一列的缺失值数量，并把结果保存为JSON文件。"


def row(text: str, line: int, answer: str | None = None) -> dict:
    msgs = [{"role": "user", "content": text}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return records.new_row(msgs, {"file": "seeds.jsonl", "line": line})


def dedup(**params) -> Dedup:
    return Dedup(Dedup.Params(**params), StageContext("dedup", 1))


def verdicts(rows: list[dict]) -> dict[int, str | None]:
    return {r["source"]["line"]: (r["reject"]["reason"] if r["reject"] else None) for r in rows}


def near_rows() -> list[dict]:
    texts = [
        STORY,  # 1
        EMAIL,  # 2
        STORY.replace("fifty", "sixty"),  # 3: one word changed
        ZH,  # 4
        ZH.replace("稻田", "麦田"),  # 5: two characters changed
        ZH_OTHER,  # 6: same template, other content
        EMAIL.replace("Thursday afternoon", "Friday morning"),  # 7: two words changed
        MIXED,  # 8
        MIXED.replace("CSV", "Excel"),  # 9: mixed text, one word changed
        STORY.replace("a girl", "an old sailor"),  # 10: three words changed
        "Explain the difference between a list and a tuple in Python.",  # 11
    ]
    return [row(t, i) for i, t in enumerate(texts, 1)]


def test_shingles_words_for_english_characters_for_chinese_and_mixed():
    assert shingles("the cat sat on the mat", 3, 2) == [
        "the cat sat",
        "cat sat on",
        "sat on the",
        "on the mat",
    ]
    assert shingles("秋天的散文", 3, 2) == ["秋天", "天的", "的散", "散文"]
    assert shingles("用python写", 3, 2)[:3] == ["用p", "py", "yt"]  # any CJK: characters, punctuation dropped
    assert shingles("hi there", 3, 2) == ["hi there"]  # shorter than n: the text is one shingle


def test_minhash_rejects_near_copies_in_english_chinese_and_mixed_text():
    rows = near_rows()
    ids = {r["source"]["line"]: r["id"] for r in rows}
    out = dedup(method="minhash")(copy.deepcopy(rows))
    got = verdicts(out)
    kept = sorted(k for k, v in got.items() if v is None)
    assert kept == [1, 2, 4, 6, 8, 11]
    for dup, orig in [(3, 1), (5, 4), (7, 2), (9, 8), (10, 1)]:
        assert got[dup].startswith(f"duplicate of {ids[orig]} (minhash jaccard 0."), (dup, got[dup])
    meta = out[2]["meta"]["dedup"]
    assert meta["duplicate_of"] == ids[1] and meta["method"] == "minhash" and 0.7 <= meta["similarity"] < 1.0
    assert all("dedup" not in out[k - 1]["meta"] for k in kept)


def test_minhash_threshold_decides_how_near():
    rows = near_rows()
    strict = verdicts(dedup(method="minhash", threshold=0.95)(copy.deepcopy(rows)))
    assert all(v is None for v in strict.values())  # no planted copy is that close
    loose = verdicts(dedup(method="minhash", threshold=0.5)(copy.deepcopy(rows)))
    assert [k for k, v in loose.items() if v] == [3, 5, 7, 9, 10]  # and no false match


def test_minhash_keep_longest_keeps_the_longest_and_names_it():
    rows = [row(STORY, 1), row(STORY + " in a poem", 2), row(STORY.replace("fifty", "sixty"), 3)]
    out = dedup(method="minhash", keep="longest")(rows)
    got = verdicts(out)
    assert got[2] is None
    assert got[1].startswith(f"duplicate of {rows[1]['id']} (minhash jaccard")
    assert out[2]["meta"]["dedup"]["duplicate_of"] == rows[1]["id"]


def test_exact_keep_longest_on_conversations():
    rows = [row("Say hi.", 1, "Hi"), row("say  HI.", 2, "hi"), row("Say hi.", 3, "Hello")]
    out = dedup(method="exact", on="conversation", keep="longest")(copy.deepcopy(rows))
    assert verdicts(out) == {1: f"duplicate of {rows[1]['id']}", 2: None, 3: None}  # 2 is one space longer
    out = dedup(method="exact", on="conversation")(copy.deepcopy(rows))
    assert verdicts(out) == {1: None, 2: f"duplicate of {rows[0]['id']}", 3: None}


def test_semantic_rejects_paraphrases_in_english_and_chinese():
    texts = [
        "What is the capital city of France?",  # 1
        "Tell me which city is the capital of France.",  # 2: paraphrase of 1
        "用一句话解释什么是光合作用。",  # 3
        "光合作用是什么？请用一句话解释。",  # 4: paraphrase of 3
        "How do I read a CSV file with pandas?",  # 5
        "Recommend three classic science fiction novels.",  # 6
    ]
    rows = [row(t, i) for i, t in enumerate(texts, 1)]
    out = dedup(method="semantic", threshold=0.9)(rows)
    got = verdicts(out)
    assert [k for k, v in got.items() if v is None] == [1, 3, 5, 6]
    assert got[2].startswith(f"duplicate of {rows[0]['id']} (cosine 0.9")
    assert got[4].startswith(f"duplicate of {rows[2]['id']} (cosine 0.9")
    assert out[1]["meta"]["dedup"]["method"] == "semantic"


def test_semantic_with_several_kmeans_clusters_still_finds_copies():
    topics = ["cooking pasta", "training a puppy", "learning the violin", "saving for retirement"]
    rows = []
    for i, t in enumerate(topics):
        rows.append(row(f"Give me five practical tips for {t} as a complete beginner.", 2 * i + 1))
        rows.append(row(f"Give me 5 practical tips for {t} as a total beginner.", 2 * i + 2))
    out = dedup(method="semantic", threshold=0.9, cluster_size=2)(rows)  # 4 k-means clusters
    got = verdicts(out)
    assert [k for k, v in got.items() if v is None] == [1, 3, 5, 7]
    assert all(got[2 * i + 2].startswith(f"duplicate of {rows[2 * i]['id']}") for i in range(4))


def test_shards_summarized_apart_and_combined_equal_the_plain_call():
    rows = near_rows()
    for method in ("exact", "minhash"):
        stage = dedup(method=method)
        plain = stage(copy.deepcopy(rows))
        shards = [copy.deepcopy(rows[i : i + 3]) for i in range(0, len(rows), 3)]
        plan = stage.combine([stage.summarize(s, k) for k, s in enumerate(shards)])
        split = [r for k, s in enumerate(shards) for r in stage.apply(s, plan, k)]
        assert [(r["id"], r["reject"], r["meta"]) for r in split] == [
            (r["id"], r["reject"], r["meta"]) for r in plain
        ]


def test_minhash_combine_streams_summary_files_and_rereads_only_shards_with_candidates(tmp_path):
    """The runner's SummaryFiles: each shard's file is read once for band keys, then again only where
    a candidate row lives (here shards 0 and 2, not the all-unique shard 1); same plan as a list."""
    import pickle

    from alignfactory.run.corpus_stages import SummaryFiles

    rows = near_rows()
    shards = [rows[0:2], [rows[3], rows[5], rows[10]], [rows[2], rows[6]]]  # 1~3 and 2~7 span shards
    stage = dedup(method="minhash")
    summaries = [stage.summarize(s, k) for k, s in enumerate(shards)]
    paths = []
    for k, summ in enumerate(summaries):
        paths.append(tmp_path / f"_SUMMARY-{k:05d}.pkl")
        paths[-1].write_bytes(pickle.dumps({"summary": summ, "seconds": k / 10, "kept_lines": [k]}))
    reads = []

    class Counted(SummaryFiles):
        def __getitem__(self, i):
            summary = super().__getitem__(i)  # IndexError past the end: iteration's stop
            reads.append(i)
            return summary

    files = Counted(paths)
    plan = stage.combine(files)
    assert plan == stage.combine(summaries)
    assert {pos: d["duplicate_of"] for pos, d in plan["shards"][2].items()} == {
        0: rows[0]["id"],
        1: rows[1]["id"],
    }
    assert reads == [0, 1, 2, 0, 2]
    assert files.field("seconds") == [0.0, 0.1, 0.2] and reads == [0, 1, 2, 0, 2]  # kept, not re-read


def test_apply_refuses_a_plan_for_other_rows():
    stage = dedup(method="minhash")
    rows = near_rows()
    plan = stage.combine([stage.summarize(rows, 0)])
    with pytest.raises(RuntimeError, match="does not match shard 0"):
        stage.apply(list(reversed(rows)), plan, 0)


def test_group_pairs_star_and_chain_in_input_order():
    a, b = group_pairs(np.array([5, 3, 5, 5, 3, 9], dtype=np.uint64))
    assert sorted(set(zip(a.tolist(), b.tolist(), strict=True))) == [(0, 2), (0, 3), (1, 4), (2, 3)]


@pytest.mark.parametrize(("num_perm", "bands"), [(128, 32), (120, 40), (16, 16)])
def test_band_keys_equal_exactly_in_the_bands_whose_values_agree(num_perm, bands):
    """Row 1 copies row 0's values in even bands only; row 2 is row 0 with every band's last value
    changed. Keys agree where a band's values agree and differ where any value differs (32-bit mixes
    of random values: a chance equality is ~2^-32 a band). Odd values per band (3) take the
    one-value-per-word path; an empty shard gives no keys."""
    rng = np.random.default_rng(num_perm)
    sig = rng.integers(0, 2**32, (3, num_perm), dtype=np.uint32)
    rows = num_perm // bands
    for j in range(bands):
        if j % 2 == 0:
            sig[1, j * rows : (j + 1) * rows] = sig[0, j * rows : (j + 1) * rows]
    sig[2] = sig[0]
    sig[2, rows - 1 :: rows] ^= 1
    keys = band_keys32(sig, bands)
    assert keys.shape == (3, bands) and keys.dtype == np.uint32
    assert (keys[0] == keys[1]).tolist() == [j % 2 == 0 for j in range(bands)]
    assert not (keys[0] == keys[2]).any()
    assert (band_keys32(sig[:1], bands) == keys[:1]).all()  # a row's keys do not depend on its shard
    assert band_keys32(sig[:0], bands).shape == (0, bands)


def test_clusters_chain_keeps_one_and_names_the_linking_row():
    # 0~1 (0.9), 1~2 (0.8), 0 and 2 not similar; 3~4; 5 alone
    a, b, sim = np.array([0, 1, 3]), np.array([1, 2, 4]), np.array([0.9, 0.8, 0.75])
    lengths = np.array([10, 30, 20, 5, 6, 1])
    assert resolve_clusters(6, a, b, sim, lengths, "first") == {
        1: (0, 0, 0.9),
        2: (0, 1, 0.8),
        4: (3, 3, 0.75),
    }
    assert resolve_clusters(6, a, b, sim, lengths, "longest") == {
        0: (1, 1, 0.9),
        2: (1, 1, 0.8),
        3: (4, 4, 0.75),
    }


def test_params_validation():
    with pytest.raises(ValidationError, match="bands"):
        Dedup.Params(method="minhash", num_perm=128, bands=24)
    with pytest.raises(ValidationError):
        Dedup.Params(method="fuzzy")
    assert Dedup.uses_model(Dedup.Params(method="semantic")) and not Dedup.uses_model(Dedup.Params())


# ---- multi-turn rows: `on: instruction` keys by every user turn ------------------------------------

MULTI_TURN = Path(__file__).parent / "data" / "multi_turn.jsonl"


def multi_turn_rows() -> dict[str, dict]:
    """tests/unit/data/multi_turn.jsonl by name: conversations ending in "thanks" / "continue" with
    different earlier turns, one copy of bloom_thanks (a system turn, other case and spacing, another
    answer), one near copy of hamlet_continue (its last word changed), one single-turn row."""
    lines = [json.loads(x) for x in MULTI_TURN.read_text().splitlines()]
    return {
        d["name"]: records.new_row(d["messages"], {"file": d["name"], "line": i}) for i, d in enumerate(lines)
    }


def by_name(out: list[dict]) -> dict[str, str | None]:
    return {r["source"]["file"]: (r["reject"]["reason"] if r["reject"] else None) for r in out}


@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_multi_turn_conversations_ending_alike_stay_distinct(method):
    # Fails on the last-turn key: every "thanks" row was one cluster, every "continue" row another.
    rows = multi_turn_rows()
    got = by_name(dedup(method=method)(list(copy.deepcopy(rows).values())))
    for name in ("bloom_thanks", "limerick_thanks", "hamlet_continue", "sourdough_continue"):
        assert got[name] is None, (name, got[name])
    assert got["bloom_thanks_again"].startswith(f"duplicate of {rows['bloom_thanks']['id']}")
    near, single = got["hamlet_continue_near"], got["bloom_single_turn"]  # MinHash only
    if method == "exact":
        assert near is None and single is None
    else:  # one changed word; the same request without the closing "thanks"
        assert single.startswith(f"duplicate of {rows['bloom_thanks']['id']} (minhash jaccard 0.9")
        assert near.startswith(f"duplicate of {rows['hamlet_continue']['id']} (minhash jaccard 0.8")


def test_single_turn_keys_are_unchanged_by_the_multi_turn_key():
    # a one-turn row keys exactly as before (its normalized instruction), so existing runs keep their plans
    r = row("  Say HI. ", 1)
    assert dedup().exact_key(r) == hashlib.sha256(b"say hi.").digest()[:8]
    assert dedup().text(r) == "  Say HI. "
