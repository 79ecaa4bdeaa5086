"""Data per arm (paired by problem) and the ablation's control flow, on a scripted engine: no Ray, no
training (a fake train step), real reject_sample shards, real scorers and statistics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alignfactory import io
from alignfactory.ablate import arms, runner
from alignfactory.ablate.spec import load
from alignfactory.run import write_shard
from alignfactory.stages.base import StageContext
from alignfactory.stages.synthesize.reject_sample import RejectSample
from tests.unit.scripted import ScriptedEngine

SYSTEM = "Answer in one short sentence that ends with: The answer is N."


def sample(text, verdict, finish="stop"):
    return {"text": text, "verdict": verdict, "finish_reason": finish}


def problem(i, samples, solution=None):
    return {
        "id": f"p{i}",
        "line": i,
        "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
        "answer": str(i + 1),
        "solution": solution or f"{i} + 1 = {i + 1}. The answer is {i + 1}.",
        "samples": samples,
    }


PROBLEMS = [
    problem(0, [sample("The answer is 1.", "correct"), sample("The answer is 7.", "incorrect")]),
    problem(1, [sample("The answer is 9.", "incorrect"), sample("The answer is", "truncated", "length")]),
    problem(2, [sample("The answer is 3, I think.", "correct"), sample("The answer is 3.", "correct")]),
    # its only correct sample was cut: not verified, so it leaves every arm
    problem(3, [sample("The answer is 4 because", "correct", "length"), sample("No idea.", "no_answer")]),
    problem(
        4,
        [
            sample("The answer is 5.", "correct"),
            sample("It is 6.", "incorrect"),
            sample("The answer is", None, "length"),
        ],
    ),
]


def texts(built):
    return [r["messages"][-1]["content"] for r in built["sft"]]


def test_paired_takes_share_problems_and_row_counts():
    v = arms.build("verified", PROBLEMS, seed=0)
    u = arms.build("unverified", PROBLEMS, seed=0)
    g = arms.build("gold", PROBLEMS, seed=0)
    assert sorted(v["problems"]) == ["p0", "p2", "p4"]  # p1: nothing correct; p3: its correct sample was cut
    assert v["problems"] == u["problems"] == g["problems"]
    assert len(v["sft"]) == len(u["sft"]) == len(g["sft"]) == 3
    # the same prompt, row for row
    assert [r["messages"][:-1] for r in v["sft"]] == [r["messages"][:-1] for r in u["sft"]]
    assert v["correct_rows"] == 3 and g["correct_rows"] == 3
    assert all(
        t.endswith(f"The answer is {int(p[1:]) + 1}.") for t, p in zip(texts(g), g["problems"], strict=True)
    )


def test_no_cut_sample_is_ever_training_data():
    for take in ("verified", "unverified"):
        for seed in range(20):
            assert not any(
                t in ("The answer is", "The answer is 4 because")
                for t in texts(arms.build(take, PROBLEMS, seed=seed))
            )


def test_unverified_draws_any_whole_sample_and_counts_the_correct_ones():
    seen = set()
    for seed in range(40):
        u = arms.build("unverified", PROBLEMS, seed=seed)
        by_id = dict(zip(u["problems"], texts(u), strict=True))
        seen.add(by_id["p0"])
        right = {
            "p0": {"The answer is 1."},
            "p2": {"The answer is 3, I think.", "The answer is 3."},
            "p4": {"The answer is 5."},
        }
        assert u["correct_rows"] == sum(by_id[p] in right[p] for p in by_id)
    assert seen == {"The answer is 1.", "The answer is 7."}  # the verdict is not looked at


def test_verified_pairs_come_from_the_same_sampling():
    v = arms.build("verified", PROBLEMS, seed=0)
    pairs = {
        p["prompt"][0]["content"]: (p["chosen"][0]["content"], p["rejected"][0]["content"])
        for p in v["preference"]
    }
    # p2 has no incorrect sample: no pair; p0 and p4 have one each, chosen = the SFT row's sample
    assert pairs == {
        "What is 0 + 1?": ("The answer is 1.", "The answer is 7."),
        "What is 4 + 1?": ("The answer is 5.", "It is 6."),
    }
    short = arms.build("verified", PROBLEMS, seed=0, pick="shortest")
    assert dict(zip(short["problems"], texts(short), strict=True))["p2"] == "The answer is 3."


def test_unverified_pairs_are_two_whole_samples_of_the_problems_verified_pairs():
    v, u = (arms.build(take, PROBLEMS, seed=0) for take in ("verified", "unverified"))
    by_prompt = {p["prompt"][0]["content"]: p for p in u["preference"]}
    assert sorted(by_prompt) == sorted(p["prompt"][0]["content"] for p in v["preference"])  # same problems
    samples = {f"What is {p['id'][1:]} + 1?": p["samples"] for p in PROBLEMS}
    for prompt, pair in by_prompt.items():
        whole = {s["text"] for s in samples[prompt] if s["finish_reason"] == "stop"}
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert chosen != rejected and {chosen, rejected} <= whole  # never a cut sample
    sft = dict(zip(u["problems"], texts(u), strict=True))
    assert by_prompt["What is 0 + 1?"]["chosen"][0]["content"] == sft["p0"]  # chosen = its SFT row


def test_eval_items_carry_held_out_pairs_in_either_shape():
    msgs = {
        "prompt": "2 + 2?",
        "chosen": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
    }
    row = runner.eval_prompt(msgs | {"rejected": [{"role": "assistant", "content": "5"}]}, SYSTEM)
    assert row["pair"] == ("4", "5")  # a pair alone is something to score: no error
    assert runner.eval_prompt({"question": "2 + 2?", "answer": 4, "chosen": "4", "rejected": "5"}, None)[
        "pair"
    ] == ("4", "5")
    assert (
        runner.pair_texts({"chosen": "4"}) is None
        and runner.pair_texts({"chosen": 4, "rejected": "5"}) is None
    )


def test_rows_cap_and_seed_pick_the_same_problems_for_every_take():
    for seed in range(5):
        picks = {
            t: arms.build(t, PROBLEMS, seed=seed, rows=2)["problems"]
            for t in ("verified", "unverified", "gold")
        }
        assert len(picks["verified"]) == 2 and picks["verified"] == picks["unverified"] == picks["gold"]
    assert arms.build("verified", PROBLEMS, seed=3) == arms.build("verified", PROBLEMS, seed=3)


def rule_for(answers: dict[str, str]):
    """Sample 0 right, sample 1 wrong, for every problem (answers: question -> answer)."""

    def rule(conv, k, seed):
        q = conv[-1]["content"]
        a = int(answers[q])
        return f"The answer is {a if k == 0 else a + 1}."

    return rule


def fake_run(train_file: Path, out: Path) -> dict:
    """A sampling run's reject_sample shard, made by the real stage on a scripted engine."""
    rows = list(io.read_inputs([train_file]))
    answers = {r["messages"][-1]["content"]: r["seed"]["answer"] for r in rows}
    stage = RejectSample(
        RejectSample.Params(n=2, template=None),
        StageContext("reject_sample", 1, seed=0),
        engine=ScriptedEngine(rule=rule_for(answers)),
    )
    done = stage(rows)
    write_shard(out / "stages/01-reject_sample/shard-00000.jsonl", done, {})
    return {"dir": out, "worker_s": 10.0, "samples_per_problem": 2, "key": "fake"}


def test_problem_samples_reads_the_stage_shards(tmp_path):
    from alignfactory.ablate.mathset import make_problems

    probs = make_problems(4, 0)
    train = tmp_path / "train.jsonl"
    io.write_jsonl_atomic(train, arms.seed_rows(probs, SYSTEM))
    fake_run(train, tmp_path / "run")
    got = arms.problem_samples(tmp_path / "run")
    assert [p["id"] for p in got] == [p["id"] for p in probs]  # input order, ids from the seed rows
    assert got[0]["prompt"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": probs[0]["question"]},
    ]
    assert [s["verdict"] for s in got[0]["samples"]] == ["correct", "incorrect"]
    assert got[0]["answer"] == probs[0]["answer"] and got[0]["solution"].endswith(
        f"The answer is {probs[0]['answer']}."
    )


# ---- the runner's control flow ---------------------------------------------------------------------------


@pytest.fixture
def ablation(tmp_path, monkeypatch):
    """An Ablation on the shipped spec at tiny size; pipeline, training and the engine are scripted."""
    calls = {"train": [], "eval": [], "trained_on": {}}

    def pipeline(self, name, train_file):
        return fake_run(train_file, self.out / "runs" / name)

    def train_job(job):
        out = Path(job["out"])
        calls["trained_on"][job["out"]] = Path(job["data"]).parent.name.split("-")[0]  # data recipe
        if (out / "_DONE").is_file():
            return json.loads((out / "_DONE").read_text())
        calls["train"].append(job)
        out.mkdir(parents=True)
        res = {"steps": job["max_steps"], "rows": job["rows"], "worker_s": 1.0}
        (out / "_DONE").write_text(json.dumps(res))
        return res

    def make_engine(cfg, batch_size=8):
        calls["eval"].append(cfg.path)
        trained = cfg.path is not None

        def rule(conv, k, seed):  # the base model answers wrong; trained models add the numbers
            nums = [int(x) for x in re.findall(r"\d+", conv[-1]["content"])]
            ops = re.findall(r"(?<=\d )[+-](?= \d)", conv[-1]["content"])
            if trained and len(nums) == 2 and ops:
                return f"The answer is {nums[0] + nums[1] if ops[0] == '+' else nums[0] - nums[1]}."
            return "The answer is 0."

        return ScriptedEngine(rule=rule)

    def reward_model(self, rows, completions):
        """A reward model trained on verified pairs checks the worked arithmetic ("a + b = c."); one
        trained on unverified pairs scores every reply alike (a tie: not a pass)."""
        checks = calls["trained_on"][self.rm_path] == "verified"

        def score(text):
            m = re.match(r"(\d+(?: [+-] \d+)+) = (\d+)\.", text)
            nums, ops = [int(x) for x in re.findall(r"\d+", m[1])], re.findall(r"[+-]", m[1])
            value = nums[0] + sum(x if op == "+" else -x for op, x in zip(ops, nums[1:], strict=True))
            return float(value == int(m[2])) if checks else 0.5

        return [[score(c) for c in cs] for cs in completions]

    monkeypatch.setattr(runner.Ablation, "pipeline", pipeline)
    monkeypatch.setattr(runner, "train_job", train_job)
    monkeypatch.setattr("alignfactory.llm.make_engine", make_engine)
    monkeypatch.setattr("alignfactory.train.scorers.Scorers._reward_model", reward_model)
    spec = load("pipelines/ablate_math.yaml", ["problems.train=6", "problems.eval=12", "eval.pass_at_k=2"])

    def make(**kw):
        return runner.Ablation(spec, "pipelines/ablate_math.yaml", output=str(tmp_path / "abl"), **kw)

    return make, calls


def test_ablation_json_shape_pairing_and_intervals(ablation):
    make, calls = ablation
    result = make().run()
    saved = json.loads((Path(make().out) / "ablation.json").read_text())
    assert saved["table"] == result["table"] and saved["name"] == "ablate_math"
    assert set(saved) == {"name", "spec_path", "eval", "leak_check", "arms", "comparisons", "table"}
    ev = saved["eval"]
    assert ev["n_items"] == 12 and len(ev["sha256"]) == 64
    assert ev["metrics"] == ["math_accuracy", "math_pass@2", "reward_accuracy"]
    assert saved["leak_check"]["ok"] is True and saved["leak_check"]["leaks"] == []
    names = ["base", "unverified", "verified", "verified_dpo", "rm_unverified", "rm_verified"]
    assert [a["name"] for a in saved["arms"]] == names
    base, unv, ver, dpo, rm_unv, rm_ver = saved["arms"]
    assert base["data"] is None and base["train"] is None
    # compared SFT arms: same rows, same optimizer steps; DPO adds its pairs on top of the same SFT
    assert unv["data"]["rows"] == ver["data"]["rows"] == 6 and unv["train"]["steps"] == ver["train"]["steps"]
    assert (
        dpo["train"]["steps"] == ver["train"]["steps"] + 8
        and dpo["data"]["pairs"] == 6
        and ver["data"]["pairs"] == 0
    )
    assert dpo["data"]["tokens"] > ver["data"]["tokens"] > 0
    assert (
        ver["data"]["correct_rows"] == 6
        and ver["data"]["worker_s"] == 10.0
        and unv["data"]["worker_s"] == 5.0
    )
    for arm in saved["arms"]:
        assert set(arm) == {"name", "data", "train", "seeds", "metrics", "items", "outputs"}
        rm = arm["name"].startswith("rm_")  # a reward model scores pairs; the others generate
        assert (
            len(arm["outputs"]) == 12
            and len(arm["items"]["reward_accuracy" if rm else "math_accuracy"]) == 12
        )
        for name, m in arm["metrics"].items():
            if rm == (name == "reward_accuracy"):
                assert m["lo"] <= m["mean"] <= m["hi"] and m["n"] == 12 and set(m["per_seed"]) == {"0"}
            else:  # not this arm's kind of metric: no score, not a zero
                assert m["mean"] is None and m["n"] == 0
    # reward models: the same pairs, as many as verified's DPO; trained on pairs only (no SFT rows)
    assert (
        rm_unv["data"]["pairs"] == rm_ver["data"]["pairs"] == rm_ver["data"]["rows"] == dpo["data"]["pairs"]
    )
    assert (
        rm_ver["data"]["correct_rows"] is None and rm_unv["train"]["steps"] == rm_ver["train"]["steps"] == 8
    )
    assert rm_ver["metrics"]["reward_accuracy"]["mean"] == 1.0  # it checks the arithmetic
    assert rm_unv["metrics"]["reward_accuracy"]["mean"] == 0.0  # ties are not passes
    assert all(o.startswith("reward(chosen) ") for o in rm_ver["outputs"])
    assert base["metrics"]["math_accuracy"]["mean"] == 0.0
    # items in the eval file's order: a trained arm's output answers the item at the same index
    evals = io.read_jsonl(Path(ev["path"]))
    add = [i for i, e in enumerate(evals) if re.fullmatch(r"What is \d+ \+ \d+\?", e["question"])]
    for i in add:
        assert ver["items"]["math_accuracy"][i] == 1.0 and ver["outputs"][i].endswith(
            f"{evals[i]['answer']}."
        )
    comps = {(c["a"], c["b"], c["metric"]): c for c in saved["comparisons"]}
    rmc = comps[("rm_unverified", "rm_verified", "reward_accuracy")]
    assert rmc["diff"] == 1.0 and rmc["b_only"] == 12 and rmc["a_only"] == 0 and rmc["p"] < 0.001  # McNemar
    c = comps[("unverified", "verified", "math_accuracy")]
    assert c["lo"] <= c["diff"] <= c["hi"] and c["p_holm"] >= c["p"] and "a_only" in c
    assert comps[("base", "verified", "math_accuracy")]["b_only"] == round(
        12 * ver["metrics"]["math_accuracy"]["mean"]
    )
    # two SFT steps (verified's is shared with verified_dpo) + one DPO step; 4 models evaluated
    assert sorted(j["step"] for j in calls["train"]) == ["dpo", "reward", "reward", "sft", "sft"]
    assert len(calls["eval"]) == 4


def test_a_rerun_reuses_data_models_and_evals(ablation):
    make, calls = ablation
    first = make().run()
    n_train, n_eval = len(calls["train"]), len(calls["eval"])
    second = make().run()
    assert (len(calls["train"]), len(calls["eval"])) == (
        n_train,
        n_eval,
    )  # nothing trained or evaluated again
    assert second["arms"] == first["arms"] and second["table"] == first["table"]


def test_limit_evaluates_the_first_items(ablation):
    make, _ = ablation
    result = make(limit=5).run()
    assert result["eval"]["n_items"] == 5 and all(len(a["outputs"]) == 5 for a in result["arms"])


def test_a_leak_fails_the_run_naming_the_item_and_arm(ablation, tmp_path):
    make, calls = ablation
    abl = make()
    train_file, _, _ = abl.problems()
    q = io.read_jsonl(train_file)[0]
    leaked = {"id": "leaky-1", "question": q["messages"][-1]["content"], "answer": q["answer"]}
    evil = tmp_path / "eval.jsonl"
    io.write_jsonl_atomic(
        evil, [{"id": "clean-1", "question": "What is 1000 + 2000?", "answer": "3000"}, leaked]
    )
    with pytest.raises(runner.LeakError) as e:
        make(eval_file=str(evil)).run()
    assert "leaky-1" in str(e.value) and "arm unverified" in str(e.value) and "clean-1" not in str(e.value)
    assert calls["train"] == []  # it fails before any training
    leaks = json.loads((Path(abl.out) / "leak_check.json").read_text())
    assert {lk["arm"] for lk in leaks} == {
        "unverified",
        "verified",
        "verified_dpo",
        "rm_unverified",
        "rm_verified",
    }


def test_eval_file_items_need_something_to_score_them_by(ablation, tmp_path):
    make, _ = ablation
    bad = tmp_path / "eval.jsonl"
    io.write_jsonl_atomic(bad, [{"id": "x", "prompt": "Write a poem."}])
    with pytest.raises(runner.AblateError, match="eval item x: nothing to score it by"):
        make(eval_file=str(bad)).run()


def test_eval_prompt_gets_the_system_turn_for_math_only():
    math = runner.eval_prompt({"question": "What is 2 + 2?", "answer": 4}, SYSTEM)
    assert math["prompt"][0] == {"role": "system", "content": SYSTEM} and math["answer"] == "4"
    code = runner.eval_prompt(
        {"prompt": "Write f.", "entry_point": "f", "tests": [{"args": [1], "expected": 1}]}, SYSTEM
    )
    assert code["prompt"] == [{"role": "user", "content": "Write f."}] and code["entry_point"] == "f"


# ---- curation: a seed file's held-out split, `selected` vs `random` from one select stage ----------------

CURATION = "pipelines/ablate_curation.yaml"


def toy_sets() -> list[str]:
    """The --set values of the CPU toy command in the spec's header comment (what a user copies)."""
    import shlex

    lines = Path(CURATION).read_text().splitlines()
    start = next(
        i for i, x in enumerate(lines) if x.startswith("#   alignfactory ablate") and "--output" in x
    )
    cmd = []
    for x in lines[start:]:
        cmd.append(x.lstrip("#").strip().rstrip("\\"))
        if not x.rstrip().endswith("\\"):
            break
    words = shlex.split(" ".join(cmd))
    return [words[i + 1] for i, w in enumerate(words) if w == "--set"]


TOY = toy_sets()


def test_split_seeds_holds_out_items_that_never_leak():
    from alignfactory.ablate.leak import find_leaks

    rows = io.read_jsonl(Path("pipelines/seeds/sft_seed.jsonl"))
    train, evals = arms.split_seeds(rows, 80, 20, seed=0)
    assert len(train) == 80 and 0 < len(evals) <= 20
    assert arms.split_seeds(rows, 80, 20, seed=0) == (train, evals)  # seeded
    assert arms.split_seeds(rows, 80, 20, seed=1)[0] != train
    assert find_leaks(evals, train) == []
    assert all(r in rows for r in train)  # input rows as they are
    held = {e["prompt"][-1]["content"] for e in evals}
    assert not held & {io.to_messages(r)[-1]["content"] for r in train}
    with_input = next(r for r in rows if r.get("input"))
    e = arms.split_seeds([with_input], 0, 1, seed=0)[1][0]
    assert e["prompt"] == [
        {"role": "user", "content": f"{with_input['instruction']}\n\n{with_input['input']}"}
    ]
    math_row = next(r for r in rows if "answer" in r)
    assert arms.split_seeds([math_row], 0, 1, seed=0)[1][0]["answer"] == math_row["answer"]
    # a duplicate of a training seed is no eval item: it is dropped, not kept as a leak
    dup = [{"instruction": "Write a haiku about autumn leaves falling."}] * 2
    assert arms.split_seeds(dup, 1, 1, seed=0) == (dup[:1], [])


def fake_pool(train_file: Path, out: Path, keep_every: int = 2) -> dict:
    """A select stage's shard: every train seed with a response; every other row rejected by select."""
    rows = []
    for i, r in enumerate(io.read_jsonl(train_file)):
        msgs = io.to_messages(r) + [{"role": "assistant", "content": f"Response {i}."}]
        row = {"id": f"r{i}", "messages": msgs, "source": {"line": i + 1}, "meta": {}}
        row["reject"] = None if i % keep_every == 0 else {"stage": "select", "reason": "not selected"}
        rows.append(row)
    write_shard(out / "stages/07-select/shard-00000.jsonl", rows, {})
    return {"dir": out, "worker_s": 8.0, "samples_per_problem": 1, "key": "pool"}


def test_selected_and_random_take_the_same_number_from_one_pool(tmp_path):
    train = tmp_path / "train.jsonl"
    io.write_jsonl_atomic(train, [{"instruction": f"Tell me fact number {i}."} for i in range(10)])
    run = fake_pool(train, tmp_path / "run")["dir"]
    sel = arms.build("selected", [], seed=0, run_dir=run)
    rnd = arms.build("random", [], seed=0, run_dir=run)
    assert sorted(sel["problems"]) == ["r0", "r2", "r4", "r6", "r8"]  # what select kept
    assert len(rnd["sft"]) == len(sel["sft"]) == 5 and set(rnd["problems"]) <= {f"r{i}" for i in range(10)}
    assert set(rnd["problems"]) != set(sel["problems"])  # (this seed draws some unselected rows)
    draws = {tuple(sorted(arms.build("random", [], seed=s, run_dir=run)["problems"])) for s in range(10)}
    assert len(draws) > 1 and arms.build("random", [], seed=3, run_dir=run) == arms.build(
        "random", [], seed=3, run_dir=run
    )
    for b in (sel, rnd):
        assert b["preference"] == [] and b["correct_rows"] is None
        assert [p["prompt"] for p in b["prompts"]] == [r["messages"][:-1] for r in b["sft"]]
        assert all(r["messages"][-1]["content"].startswith("Response") for r in b["sft"])
    assert len(arms.build("random", [], seed=0, rows=2, run_dir=run)["sft"]) == 2
    with pytest.raises(FileNotFoundError, match="needs a select stage"):
        arms.build("selected", [], seed=0, run_dir=tmp_path)


def test_shipped_curation_spec_loads_and_its_pool_pipeline_validates(tmp_path):
    from alignfactory.spec import SpecError, load_spec

    with pytest.raises(SpecError, match="eval.reward_model: reward model not found: runs/train/reward"):
        load(CURATION)  # a fresh clone has no reward model yet: said at once, not after training
    rm = tmp_path / "reward"
    rm.mkdir()
    spec = load(CURATION, [f"eval.reward_model={rm}"])
    assert [a.name for a in spec.arms] == ["base", "curated", "random"]
    assert {n: d.take for n, d in spec.data.items()} == {"curated": "selected", "random": "random"}
    assert spec.eval.judge and spec.problems.path == "pipelines/seeds/sft_seed.jsonl"
    assert ("random", "curated") in spec.compare

    # the run's pipeline as the runner loads it: the main job's curation stages, select after generate
    def pipeline(spec):
        r = spec.runs["pool"]
        sets = [f"{k}={json.dumps(v)}" for k, v in r.set.items()] + ['input.path="x.jsonl"']
        return load_spec(r.pipeline, sets, output=str(tmp_path / "run"))

    pipe = pipeline(spec)
    names = [s.name for s in pipe.stages]
    assert names == ["dedup", "dedup", "instag", "tag_normalize", "generate", "filter", "select", "export"]
    main = {s.name: s.params for s in load_spec("pipelines/sft_data.yaml").stages}
    for name in ("instag", "tag_normalize", "select"):  # the main job's curation, as it is there
        assert pipe.stages[names.index(name)].params == main[name], name
    assert [s.resources.num_gpus for s in pipe.stages if s.name in ("instag", "generate")] == [1, 1]
    # the header's CPU toy command: the embedded model, no GPU anywhere, no reward model
    toy = load(CURATION, TOY)
    assert toy.eval.reward_model is None and toy.model.path is None and toy.problems.train == 24
    assert all(s.resources.num_gpus == 0 for s in pipeline(toy).stages)
    assert toy.training["sft"][0].config_path == "pipelines/train_sft_cpu.yaml"


def test_eval_prompt_takes_bare_prompts_when_a_reward_model_or_judge_scores():
    bare = {"id": "b", "prompt": [{"role": "user", "content": "Name a colour."}]}
    with pytest.raises(runner.AblateError, match="or eval.reward_model / eval.judge"):
        runner.eval_prompt(bare, SYSTEM)
    row = runner.eval_prompt(bare, SYSTEM, open_ended=True)
    assert row == {"prompt": [{"role": "system", "content": SYSTEM}] + bare["prompt"]}


def test_curation_ablation_runs_on_a_scripted_judge(tmp_path, monkeypatch):
    """The curation spec end to end without models: seed split, pool takes, leak check, judge_mean."""
    monkeypatch.setattr(
        runner.Ablation, "pipeline", lambda self, name, f: fake_pool(f, self.out / "runs" / name)
    )

    def train_job(job):
        out = Path(job["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "_DONE").write_text(
            json.dumps({"steps": job["max_steps"], "rows": job["rows"], "worker_s": 1.0})
        )
        return {"steps": job["max_steps"], "rows": job["rows"], "worker_s": 1.0}

    def make_engine(cfg, batch_size=8):
        trained = cfg.path is not None

        def rule(conv, k, seed):  # replies: "Trained ..." or "Base ..."; the judge rates them 8 or 3
            text = conv[-1]["content"]
            if "helpfulness" in text:
                return json.dumps({"reason": "ok", "score": 8 if "Trained reply" in text else 3})
            return "Trained reply." if trained else "Base reply."

        return ScriptedEngine(rule=rule)

    monkeypatch.setattr(runner, "train_job", train_job)
    monkeypatch.setattr("alignfactory.llm.make_engine", make_engine)
    spec = load(CURATION, TOY)
    result = runner.Ablation(spec, CURATION, output=str(tmp_path / "abl")).run()
    evals = io.read_jsonl(Path(result["eval"]["path"]))
    maths = sum("answer" in e for e in evals)  # a seed with an answer is also scored as math
    assert result["leak_check"]["ok"] and maths >= 1
    assert result["eval"]["metrics"] == ["judge_mean", "math_accuracy"]
    base, cur, rnd = result["arms"]
    assert cur["data"]["rows"] == rnd["data"]["rows"] == 12 and cur["train"]["steps"] == rnd["train"]["steps"]
    assert (
        cur["data"]["recipe"] == "selected from run pool" and rnd["data"]["recipe"] == "random from run pool"
    )
    n = result["eval"]["n_items"]
    assert 0 < n <= 8 and len(base["items"]["judge_mean"]) == n
    assert base["metrics"]["judge_mean"]["mean"] == pytest.approx(0.3)
    assert cur["metrics"]["judge_mean"]["mean"] == pytest.approx(0.8)
    assert base["metrics"]["math_accuracy"]["n"] == maths  # judged: every item; math: those with answers
    assert (tmp_path / "abl" / "report.html").is_file()
