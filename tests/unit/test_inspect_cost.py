"""alignfactory.cost: per-stage cost and yield, per-unit cost, the printed table, the budget guard."""

import json

import pytest
from pydantic import ValidationError

from alignfactory import cost, io
from alignfactory.run.budget import BudgetGuard
from tests.unit.test_inspect import make_run


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "rich")


def manifest(run):
    return json.loads((run / "manifest.json").read_text())


def test_stage_costs_match_the_manifest(rich):
    m = manifest(rich)
    stages = cost.stage_costs(m)
    assert [s["stage"] for s in stages] == [s["dir"].split("/")[1] for s in m["stages"]]
    for s, ms in zip(stages, m["stages"], strict=True):
        assert (s["rows_in"], s["rows_out"], s["rejected"]) == (ms["rows_in"], ms["rows_out"], ms["rejected"])
        assert s["rows_in"] == s["rows_out"] + s["rejected"]
        assert (s["tokens_in"], s["tokens_out"]) == (ms.get("tokens_in", 0), ms.get("tokens_out", 0))
    by = {s["stage"].split("-", 1)[1]: s for s in stages}
    # the spec prices every model ("*") at 0.5 / 2.0 per 1000 tokens in / out
    assert by["generate"]["money"] == pytest.approx(600 / 1000 * 0.5 + 1500 / 1000 * 2.0)
    assert by["generate"]["model"] == cost.DEFAULT_MODEL
    # generate holds 1 GPU per worker: gpu-seconds = (shard seconds + load seconds) x 1
    assert by["generate"]["gpu_seconds"] == pytest.approx(3.0) and by["judge"]["gpu_seconds"] == 0
    assert by["read"]["money"] == 0 and by["read"]["model"] is None


def test_summary_totals_and_per_unit(rich):
    m = manifest(rich)
    c = cost.summary(m, rich)
    t = c["total"]
    assert t["tokens_in"] == sum(s.get("tokens_in", 0) for s in m["stages"])
    assert t["tokens"] == t["tokens_in"] + t["tokens_out"]
    assert t["money"] == pytest.approx(t["tokens_in"] / 1000 * 0.5 + t["tokens_out"] / 1000 * 2.0)
    n_sft = len(io.read_jsonl(rich / "sft" / "train.jsonl"))
    n_pairs = len(io.read_jsonl(rich / "preference" / "train.jsonl"))
    assert c["per"]["sft_rows"]["count"] == n_sft > 0 and c["per"]["preference_pairs"]["count"] == n_pairs > 0
    assert c["per"]["sft_rows"]["tokens"] == pytest.approx(t["tokens"] / n_sft, abs=0.01)
    assert c["per"]["preference_pairs"]["money"] == pytest.approx(t["money"] / n_pairs, abs=1e-6)
    json.dumps(c)  # goes into manifest.json as is


def test_table_lists_every_stage_and_the_totals(rich):
    c = cost.summary(manifest(rich), rich)
    text = cost.table(c)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["stage", "in", "out", "rej"]
    assert [ln.split()[0] for ln in lines[1 : 1 + len(c["stages"])]] == [s["stage"] for s in c["stages"]]
    total = lines[1 + len(c["stages"])].split()
    assert (
        total[0] == "total"
        and int(total[1]) == c["total"]["tokens_in"]
        and int(total[2]) == c["total"]["tokens_out"]
    )
    assert f"per SFT row ({c['per']['sft_rows']['count']})" in text
    # the yield: input lines read -> accepted SFT rows and pairs, from the run's own files
    m = manifest(rich)
    n_read = m["stages"][0]["rows_in"]
    n_sft = len(io.read_jsonl(rich / "sft" / "train.jsonl"))
    n_pairs = len(io.read_jsonl(rich / "preference" / "train.jsonl"))
    assert c["yield"] == {
        "input_rows": n_read,
        "sft_rows": n_sft,
        "preference_pairs": n_pairs,
        "sft_per_input": round(n_sft / n_read, 4),
    }
    assert lines[-1] == (
        f"yield: {n_read} input rows -> {n_sft} SFT rows ({100 * n_sft / n_read:.0f}%), "
        f"{n_pairs} preference pairs"
    )


def test_per_stage_model_and_unpriced_models():
    spec = {
        "model": {"path": "/models/big"},
        "prices": {"/models/judge": {"input_per_1k": 1.0, "output_per_1k": 1.0}},
        "stages": [
            {"name": "generate"},
            {"name": "judge", "model": {"path": "/models/judge"}},
            {"name": "x", "model": {}},
        ],
    }
    assert cost.stage_models(spec) == {1: "/models/big", 2: "/models/judge", 3: cost.DEFAULT_MODEL}
    assert cost.price_of(spec["prices"], "/models/big") == cost.Price()  # unpriced: free, not an error
    assert cost.money(cost.price_of(spec["prices"], "/models/judge"), 500, 1500) == pytest.approx(2.0)


def test_budget_and_price_validation():
    with pytest.raises(ValidationError):
        cost.Budget(tokens=0)
    with pytest.raises(ValidationError):
        cost.Budget(dollars=3)  # unknown key
    with pytest.raises(ValidationError):
        cost.Price(input_per_1k=-1)


def test_budget_guard_counts_earlier_shards_and_stops(rich):
    spec = manifest(rich)["spec"]
    spent = sum(s.get("tokens_in", 0) + s.get("tokens_out", 0) for s in manifest(rich)["stages"])
    assert BudgetGuard(spec, rich).tokens == spent  # everything already written counts
    BudgetGuard(spec, rich).check()  # no budget: never stops

    guard = BudgetGuard(spec | {"budget": {"tokens": spent + 100}}, rich)
    guard.check()
    guard.add(5, {"tokens_in": 60, "tokens_out": 39})
    guard.check()  # 99 more: still under
    guard.add(5, {"tokens_in": 0, "tokens_out": 1})
    with pytest.raises(cost.BudgetExceeded, match=r"token budget spent: .*bigger budget"):
        guard.check()

    money = BudgetGuard(spec | {"budget": {"money": 100.0}}, rich)
    assert money.exceeded() is None
    money.add(5, {"tokens_in": 0, "tokens_out": 50_000 * 1000})  # 50M tokens at 2.0 / 1k
    assert money.exceeded().startswith("money budget spent")


def test_budget_guard_on_an_empty_run_dir(tmp_path):
    guard = BudgetGuard({"budget": {"tokens": 10}, "stages": []}, tmp_path)
    assert guard.tokens == 0 and guard.exceeded() is None
