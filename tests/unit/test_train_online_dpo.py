"""Online DPO's DPO step and scorers on a tiny random llama (no Ray, no sandbox)."""

import json
import math

import pytest

from alignfactory.train.common import tiny_llama
from alignfactory.train.online_dpo import OnlineDPO, load_config
from alignfactory.train.scorers import Scorers
from tests.unit.scripted import ScriptedEngine


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    d = tmp_path_factory.mktemp("odpo")
    model = str(tiny_llama(d / "tiny"))
    prompts = d / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": [{"role": "user", "content": "Say yes."}]}) + "\n")
    cfg = load_config(
        "pipelines/train_online_dpo_cpu.yaml",
        {
            "policy": model,
            "reference": model,
            "prompts": [str(prompts)],
            "output_dir": str(d / "out"),
            "n": 2,
            "beta": 0.5,
            "learning_rate": 1e-2,
            "scorer": {"kind": "reward_model", "reward_model": model},
        },
    )
    return OnlineDPO(cfg, resume=False)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_no_pair_means_no_optimizer_step(trainer):
    before = snapshot(trainer.model)
    stats = trainer.dpo_step([])
    assert stats["optimizer_step"] is False
    assert all((v == trainer.model.state_dict()[k]).all() for k, v in before.items())


def test_dpo_step_loss_starts_at_log2_and_moves_toward_chosen(trainer):
    tok = trainer.tok
    prompt = trainer.prompt_ids([{"prompt": [{"role": "user", "content": "Say yes."}]}])[0]
    chosen = tok("Yes.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rejected = tok("No way, never.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    first = trainer.dpo_step([(prompt, chosen, rejected)])  # policy == reference: logits 0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["kl"] == pytest.approx(0.0, abs=1e-5) and first["optimizer_step"] is True
    second = trainer.dpo_step([(prompt, chosen, rejected)])
    assert second["loss"] < first["loss"]  # the step raised log p(chosen) - log p(rejected) vs the reference
    assert second["implicit_reward_chosen"] > second["implicit_reward_rejected"]
    assert second["implicit_accuracy"] == 1.0 and second["kl"] != 0.0


def test_generate_returns_n_completions_cut_at_eos(trainer):
    pids = trainer.prompt_ids([{"prompt": [{"role": "user", "content": "Hi"}]}] * 2)
    comps = trainer.generate(pids, step=0)
    assert [len(c) for c in comps] == [2, 2]
    eos = trainer.tok.eos_token_id
    for c in (c for cs in comps for c in cs):
        assert 1 <= len(c) <= trainer.cfg.max_new_tokens and eos not in c[:-1]


def test_reward_model_scorer_scores_every_completion(trainer):
    rows = [{"prompt": [{"role": "user", "content": "q1"}]}, {"prompt": [{"role": "user", "content": "q2"}]}]
    scores, kinds = trainer.scorers.score(rows, [["a", "bb", "ccc"], ["d"]])
    assert kinds == ["reward_model", "reward_model"]
    assert [len(s) for s in scores] == [3, 1] and all(math.isfinite(x) for s in scores for x in s)
    assert len(set(scores[0])) == 3  # different texts, different scores


@pytest.mark.parametrize(
    "constrains,replies",
    [
        (True, ['{"reason": "good", "score": 9}', '{"reason": "meh", "score": 2}', '{"reason": "no score"}']),
        (False, ["Reason: good.\nScore: 9", "Score: 2", "I refuse to grade."]),  # a server that cannot
    ],
)
def test_judge_scorer_asks_for_the_judge_shape_and_keeps_unreadable_unscored(constrains, replies):
    from alignfactory.stages.synthesize.judge import Judge

    it = iter(replies)
    s = Scorers("judge", judge_model="scripted")
    s._judge_engine = ScriptedEngine(rule=lambda conv, k, seed: next(it), constrains=constrains)
    scores, kinds = s.score([{"prompt": [{"role": "user", "content": "q"}]}], [["x", "y", "z"]])
    assert kinds == ["judge"] and scores == [[0.9, 0.2, None]]
    # the judge stage's own pointwise shape: {"reason", "score": 1-10}
    (call,) = s._judge_engine.calls
    assert call["sampling"].constraint == Judge.constraint(Judge.Params())


def test_auto_picks_a_verifier_per_row():
    from alignfactory.train.scorers import kind_of

    assert kind_of({"entry_point": "f", "tests": [{"args": [], "expected": 1}]}, True, False) == "code"
    assert kind_of({"verifier": "def evaluate(r): return True"}, True, False) == "autoif"
    assert kind_of({}, True, False) == "reward_model"
    assert kind_of({}, False, True) == "judge"
    assert kind_of({}, False, False) is None


def test_prompts_are_dealt_once_per_epoch_across_ranks_and_steps(trainer):
    """5 prompts, 2 per step, 2 ranks: an epoch is 2 steps (8 positions, the last 3 wrap to the
    epoch's start); a step's ranks never share a prompt, every epoch covers every prompt, and each
    epoch has its own shuffle."""
    import copy

    ranks = []
    for rank in range(2):
        t = copy.copy(trainer)
        t.prompts, t.rank, t.world = list(range(5)), rank, 2
        t.cfg = trainer.cfg.model_copy(update={"prompts_per_step": 2})
        ranks.append(t)
    steps = [[t.batch_indices(step) for t in ranks] for step in range(8)]  # 4 epochs
    for r0, r1 in steps:
        assert not set(r0) & set(r1)
    epochs = [[i for st in steps[e : e + 2] for r in st for i in r] for e in range(0, 8, 2)]
    for e in epochs:
        assert set(e) == {0, 1, 2, 3, 4} and e[5:] == e[:3]  # all 5, then the pad from the start
    assert epochs[0] != epochs[1]  # each epoch its own shuffle


def test_a_step_scored_by_math_code_and_autoif_pairs_the_verified_completion(tmp_path):
    """One loop step on seeds carrying `answer`, `tests` and `verifier`: `auto` picks the math, code
    (real sandbox) and AutoIF (real sandbox) scorers, and every pair's chosen completion is the one
    its verifier passes. The policy's sampling is replaced by fixed completions (a random tiny
    model writes nothing a verifier passes); scoring, pairing and the DPO step are the real ones."""
    model = str(tiny_llama(tmp_path / "tiny"))
    seeds = [
        {"instruction": "What is 6 times 7?", "answer": "42"},
        {"instruction": "Write add(a, b).", "entry_point": "add", "tests": [{"args": [1, 2], "expected": 3}]},
        {"instruction": "Shout hello.", "verifier": "def evaluate(response):\n    return response.isupper()"},
    ]
    good = {0: "6 * 7 = 42. The answer is \\boxed{42}.", 1: "def add(a, b):\n    return a + b", 2: "HELLO"}
    bad = {0: "The answer is \\boxed{41}.", 1: "def add(a, b):\n    return a - b", 2: "hello"}
    prompts = tmp_path / "seeds.jsonl"
    prompts.write_text("".join(json.dumps(s) + "\n" for s in seeds))
    cfg = load_config(
        "pipelines/train_online_dpo_cpu.yaml",
        {
            "policy": model,
            "reference": model,
            "prompts": [str(prompts)],
            "output_dir": str(tmp_path / "out"),
            "n": 2,
            "prompts_per_step": 3,
            "scorer": {"kind": "auto"},
        },
    )
    trainer = OnlineDPO(cfg, resume=False)
    tok = trainer.tok
    which = {tuple(p): i for i, p in enumerate(trainer.prompt_ids(trainer.prompts))}

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    # the worse completion first: picking the first would pick wrong
    trainer.generate = lambda pids, step: [
        [ids(bad[which[tuple(p)]]), ids(good[which[tuple(p)]])] for p in pids
    ]
    seen = []
    real_step = trainer.dpo_step
    trainer.dpo_step = lambda pairs: seen.extend(pairs) or real_step(pairs)
    try:
        stats = trainer.step(0)
    finally:
        trainer.scorers.close()
    assert stats["scorers"] == {"math": 1, "code": 1, "autoif": 1}
    assert stats["pairs"] == 3 and stats["ties_skipped"] == stats["unscored_skipped"] == 0
    assert stats["reward_chosen"] == 1.0 and stats["reward_rejected"] == 0.0
    assert stats["optimizer_step"] is True
    for prompt, chosen, rejected in seen:
        i = which[tuple(prompt)]
        assert (chosen, rejected) == (ids(good[i]), ids(bad[i])), seeds[i]["instruction"]
