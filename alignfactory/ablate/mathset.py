"""Seeded arithmetic word problems with exact integer answers, for the math ablation (pipelines/ablate_math.yaml).

    make_problems(n, seed)               n unique problems, the same ones for the same (n, seed)
    split_problems(n_train, n_eval, seed) (train, eval): no eval item leaks into train (leak.find_leaks)
    gold_solution(problem)               "5 + 7 = 12. The answer is 12." (for SFT "gold" arms)
    python -m alignfactory.ablate.mathset --train 500 --eval 200 --seed 0 --out data/ablate_math

The embedded model (SmolLM2-135M-Instruct) answers only ~10% of one-step addition/subtraction word
problems greedily, so the mix is kept easy: one-step add/subtract word problems with small numbers
(70%), two-step word problems (15%), bare arithmetic "What is 17 + 25?" (15%). Word problems come from
~40 templates (different people, objects, verbs, settings) so items are not near-identical boilerplate.

A problem: {"id": "math-<seed>-<i>", "question", "answer" (the integer as text), "kind":
"add"|"sub"|"two_step"|"arith", "operands": [a, b(, c)], "ops": ["+"|"-", ...], "template": "add-3"};
answer == operands folded left to right with ops, never negative.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from alignfactory.ablate.leak import TrainingIndex, normalize_question
from alignfactory.io import write_jsonl_atomic

KINDS = ("add", "sub", "two_step", "arith")
WEIGHTS = (0.35, 0.35, 0.15, 0.15)  # one-step word problems dominate: the model can do some of them
EVAL_RETRIES = 50  # fresh draws of the same kind for an eval slot whose item leaks, before moving on

NAMES = [  # (name, subject pronoun, possessive)
    ("Tom", "he", "his"),
    ("Sara", "she", "her"),
    ("Liam", "he", "his"),
    ("Maya", "she", "her"),
    ("Noah", "he", "his"),
    ("Aisha", "she", "her"),
    ("Ben", "he", "his"),
    ("Chloe", "she", "her"),
    ("Diego", "he", "his"),
    ("Emma", "she", "her"),
    ("Omar", "he", "his"),
    ("Priya", "she", "her"),
    ("Lucas", "he", "his"),
    ("Zoe", "she", "her"),
    ("Kenji", "he", "his"),
    ("Hannah", "she", "her"),
    ("Mateo", "he", "his"),
    ("Nina", "she", "her"),
    ("Samir", "he", "his"),
    ("Lily", "she", "her"),
    ("Jack", "he", "his"),
    ("Rosa", "she", "her"),
    ("Ethan", "he", "his"),
    ("Grace", "she", "her"),
]

OBJECTS = {
    "things": ["marbles", "stickers", "pencils", "crayons", "stamps", "cards", "shells", "coins", "buttons"],
    "fruit": ["apples", "oranges", "pears", "plums", "lemons", "peaches"],
    "picked": ["flowers", "strawberries", "apples", "blueberries", "tomatoes", "cherries"],
    "animals": ["cows", "sheep", "chickens", "goats", "ducks", "rabbits"],
    "baked": ["cookies", "cupcakes", "muffins", "brownies", "pies", "bagels"],
    "pond": ["ducks", "frogs", "geese", "swans", "turtles"],
    "tree": ["apples", "leaves", "pears", "lemons", "cherries"],
    "birds": ["birds", "pigeons", "sparrows", "crows", "seagulls"],
    "sweets": ["chocolates", "candies", "cookies", "crackers", "dates"],
    "goods": ["toys", "hats", "umbrellas", "lamps", "kites", "backpacks", "mugs"],
    "school": ["pencils", "erasers", "markers", "rulers", "notebooks"],
    "toys": ["toy cars", "blocks", "dolls", "puzzles", "balls"],
}

# (template id, object pool or None, text). Fields: {name} {he} {He} {his} {a} {b} {c} {obj}.
WORD_TEMPLATES: dict[str, list[tuple[str | None, str]]] = {
    "add": [
        ("things", "{name} has {a} {obj}. {He} gets {b} more {obj}. How many {obj} does {name} have now?"),
        (
            "fruit",
            "There are {a} {obj} in a basket. {name} puts {b} more {obj} in the basket. "
            "How many {obj} are in the basket now?",
        ),
        (
            None,
            "{name} read {a} pages on Monday and {b} pages on Tuesday. How many pages did {he} read in all?",
        ),
        (
            None,
            "A shelf holds {a} books. {name} adds {b} more books to it. How many books are on the shelf now?",
        ),
        (
            "picked",
            "{name} picked {a} {obj} in the morning and {b} {obj} in the afternoon. "
            "How many {obj} did {he} pick altogether?",
        ),
        (
            None,
            "A bus has {a} passengers. At the next stop, {b} more people get on. "
            "How many passengers are on the bus now?",
        ),
        (
            None,
            "{name} scored {a} points in the first game and {b} points in the second game. "
            "What is {his} total score?",
        ),
        (
            "animals",
            "Farmer {name} has {a} {obj}. {He} buys {b} more {obj}. How many {obj} does {he} have now?",
        ),
        (
            None,
            "{name} saved {a} dollars last week and {b} dollars this week. "
            "How many dollars has {he} saved in total?",
        ),
        (None, "In a class there are {a} girls and {b} boys. How many students are in the class?"),
        (
            "baked",
            "{name} baked {a} {obj} for a party, and a friend brought {b} more. "
            "How many {obj} are there for the party?",
        ),
        (
            "pond",
            "There are {a} {obj} at a pond. Then {b} more {obj} arrive. How many {obj} are at the pond now?",
        ),
        (
            None,
            "{name} walked for {a} minutes before lunch and {b} minutes after lunch. "
            "How many minutes did {he} walk in all?",
        ),
        (
            None,
            "A library lent out {a} books in the morning and {b} books in the afternoon. "
            "How many books did it lend out that day?",
        ),
        (
            "toys",
            "{name} has {a} {obj}. For {his} birthday {he} is given {b} more. How many {obj} does {he} have?",
        ),
    ],
    "sub": [
        (
            "things",
            "{name} had {a} {obj}. {He} gave {b} {obj} to a friend. How many {obj} does {name} have left?",
        ),
        (
            "tree",
            "There were {a} {obj} on a tree. Then {b} of them fell off. How many {obj} are still on the tree?",
        ),
        (
            "birds",
            "{a} {obj} were sitting on a fence. Then {b} {obj} flew away. "
            "How many {obj} are left on the fence?",
        ),
        (
            None,
            "{name} had {a} dollars. {He} spent {b} dollars on a book. How many dollars does {he} have left?",
        ),
        ("sweets", "A box had {a} {obj}. {name} ate {b} of them. How many {obj} are left in the box?"),
        ("goods", "A store had {a} {obj}. It sold {b} of them. How many {obj} does the store have left?"),
        (
            "school",
            "{name} has {a} {obj} and loses {b} of them on the way to school. "
            "How many {obj} does {he} have now?",
        ),
        (
            None,
            "A bus had {a} passengers. At the next stop, {b} passengers got off. "
            "How many passengers are still on the bus?",
        ),
        (
            None,
            "{name}'s book has {a} pages. {He} has read {b} pages so far. How many pages are left to read?",
        ),
        (
            None,
            "There are {a} students in a club. Today {b} of them are absent. How many students are present?",
        ),
        (
            None,
            "{name} blew up {a} balloons for a party, and {b} of them popped. How many balloons are left?",
        ),
        ("baked", "A baker made {a} {obj}. By noon, {b} {obj} were sold. How many {obj} were not sold yet?"),
        (
            None,
            "{name} needs {a} stamps to fill an album and already has {b}. How many more stamps does {he} need?",
        ),
        (
            None,
            "A parking lot has {a} cars. Then {b} cars drive away. How many cars are left in the parking lot?",
        ),
        ("fruit", "{name} bought {a} {obj} and used {b} of them to make juice. How many {obj} are left?"),
    ],
    "two_step": [  # ops follow the template: (ops, pool, text)
        (
            "things",
            "{name} had {a} {obj}. {He} bought {b} more and then gave {c} to a friend. "
            "How many {obj} does {he} have now?",
        ),
        (
            None,
            "A bus had {a} passengers. At a stop, {b} got off and {c} got on. "
            "How many passengers are on the bus now?",
        ),
        (
            "picked",
            "{name} picked {a} {obj} on Monday, {b} on Tuesday, and {c} on Wednesday. "
            "How many {obj} did {he} pick in total?",
        ),
        (
            "goods",
            "A shop had {a} {obj}. It sold {b} and then received a delivery of {c} more. "
            "How many {obj} does the shop have now?",
        ),
        (
            None,
            "{name} had {a} dollars. {He} earned {b} dollars and then spent {c} dollars. "
            "How many dollars does {he} have now?",
        ),
        (
            "sweets",
            "There were {a} {obj} in a jar. {name} took out {b} and {his} friend took out {c}. "
            "How many {obj} are left in the jar?",
        ),
        (
            None,
            "A library had {a} books. It got {b} new books and gave away {c} old ones. "
            "How many books does the library have now?",
        ),
        (
            "animals",
            "A farm had {a} {obj}. The farmer sold {b} of them and bought {c} more. "
            "How many {obj} are on the farm now?",
        ),
    ],
}
TWO_STEP_OPS = [
    ["+", "-"],
    ["-", "+"],
    ["+", "+"],
    ["-", "+"],
    ["+", "-"],
    ["-", "-"],
    ["+", "-"],
    ["-", "+"],
]

ARITH_TEMPLATES = [
    "What is {a} {op} {b}?",
    "What is {a} {word} {b}?",
    "Compute {a} {op} {b}.",
    "Calculate {a} {op} {b}.",
    "Find the value of {a} {op} {b}.",
    "{a} {op} {b} = ?",
    "Work out {a} {op} {b}.",
    "What do you get when you {verb}?",
]


def _value(operands: list[int], ops: list[str]) -> int:
    v = operands[0]
    for op, x in zip(ops, operands[1:], strict=True):
        v = v + x if op == "+" else v - x
    return v


def _fill(text: str, pool: str | None, rng: random.Random, nums: dict) -> str:
    name, he, his = rng.choice(NAMES)
    obj = rng.choice(OBJECTS[pool]) if pool else ""
    return text.format(name=name, he=he, He=he.capitalize(), his=his, obj=obj, **nums)


def _word(kind: str, rng: random.Random) -> dict:
    k = rng.randrange(len(WORD_TEMPLATES[kind]))
    pool, text = WORD_TEMPLATES[kind][k]
    if kind == "add":
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        operands, ops = [a, b], ["+"]
    elif kind == "sub":
        a = rng.randint(8, 60)
        b = rng.randint(2, a - 2)
        operands, ops = [a, b], ["-"]
    else:
        ops = TWO_STEP_OPS[k]
        a = rng.randint(10, 40)
        b = rng.randint(2, 20) if ops[0] == "+" else rng.randint(2, a - 4)
        mid = _value([a, b], ops[:1])
        c = rng.randint(2, 20) if ops[1] == "+" else rng.randint(2, min(mid - 1, 25))
        operands = [a, b, c]
    nums = dict(zip("abc", operands, strict=False))
    return {
        "question": _fill(text, pool, rng, nums),
        "kind": kind,
        "operands": operands,
        "ops": ops,
        "template": f"{kind}-{k}",
    }


def _arith(rng: random.Random) -> dict:
    op = rng.choice("+-")
    if op == "+":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
    else:
        a = rng.randint(20, 99)
        b = rng.randint(10, a - 1)
    k = rng.randrange(len(ARITH_TEMPLATES))
    word = "plus" if op == "+" else "minus"
    verb = f"add {a} and {b}" if op == "+" else f"subtract {b} from {a}"
    question = ARITH_TEMPLATES[k].format(a=a, b=b, op=op, word=word, verb=verb)
    return {"question": question, "kind": "arith", "operands": [a, b], "ops": [op], "template": f"arith-{k}"}


def _draw(kind: str, rng: random.Random) -> dict:
    item = _arith(rng) if kind == "arith" else _word(kind, rng)
    item["answer"] = str(_value(item["operands"], item["ops"]))
    return item


class _Stream:
    """Unique problems in a fixed order for a seed; make_problems and split_problems both read it, so
    split_problems(n, m, s)[0] == make_problems(n, s)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = random.Random(seed)
        self.seen: set[str] = set()
        self.i = 0

    def _unique(self, kind: str) -> dict | None:
        for _ in range(1000):
            item = _draw(kind, self.rng)
            key = normalize_question(item["question"])
            if key not in self.seen:
                self.seen.add(key)
                return item
        return None  # this kind's space is exhausted (not at any size this is used for)

    def next(self, kind: str | None = None) -> dict:
        if kind is None:
            kind = self.rng.choices(KINDS, WEIGHTS)[0]
        item = self._unique(kind)
        if item is None:
            for other in KINDS:  # fall back to any kind that still has room
                item = self._unique(other)
                if item is not None:
                    break
            else:
                raise RuntimeError(f"no new unique problem after {self.i} (seed {self.seed})")
        return self._numbered(item)

    def _numbered(self, item: dict) -> dict:
        out = {"id": f"math-{self.seed}-{self.i}", **item}
        self.i += 1
        return out

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.next()


def make_problems(n: int, seed: int) -> list[dict]:
    """n problems, deterministic for (n, seed); no two share a normalized question; ids math-<seed>-<i>."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    stream = _Stream(seed)
    return [stream.next() for _ in range(n)]


def split_problems(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, eval) of exactly n_train and n_eval problems. train = make_problems(n_train, seed); eval
    items come next from the same stream, and one that leaks into train (leak.find_leaks: same question,
    or its numbers and answer in one training row) is redrawn as the same kind (EVAL_RETRIES tries), then
    dropped for the next item of the stream. Eval ids continue after train's, with gaps where dropped."""
    if n_train < 0 or n_eval < 0:
        raise ValueError(f"sizes must be >= 0, got {n_train}, {n_eval}")
    stream = _Stream(seed)
    train = [stream.next() for _ in range(n_train)]
    index = TrainingIndex(train_rows(train))
    evals: list[dict] = []
    budget = 20 * (n_eval + 10) * (EVAL_RETRIES + 1)  # a hard stop instead of an endless loop
    while len(evals) < n_eval:
        item = stream.next()
        for _ in range(EVAL_RETRIES):
            if not index.leaks(item):
                evals.append(item)
                break
            budget -= 1
            item = stream.next(item["kind"])
        budget -= 1
        if budget <= 0:
            raise RuntimeError(
                f"could not find {n_eval} eval items that do not leak into {n_train} train items"
            )
    return train, evals


def gold_solution(problem: dict) -> str:
    """A short worked answer ending in "The answer is N." (alignfactory.verify.math reads N from it)."""
    operands, ops = problem["operands"], problem["ops"]
    steps, v = [], operands[0]
    for op, x in zip(ops, operands[1:], strict=True):
        nv = v + x if op == "+" else v - x
        steps.append(f"{v} {op} {x} = {nv}")
        v = nv
    if len(steps) == 1:
        verb = "add" if ops[0] == "+" else "subtract"
        body = f"We {verb}: {steps[0]}."
    else:
        body = "First, " + steps[0] + ". " + " ".join(f"Then, {s}." for s in steps[1:])
    return f"{body} The answer is {v}."


# ---- files ---------------------------------------------------------------------------------------


def train_rows(problems: list[dict]) -> list[dict]:
    """Seed rows for the math pipeline (io.read_inputs): the question as the user turn; answer and
    solution stay in row["seed"], where reject_sample reads answer_field / solution_field."""
    return [
        {
            "id": p["id"],
            "messages": [{"role": "user", "content": p["question"]}],
            "answer": p["answer"],
            "solution": gold_solution(p),
        }
        for p in problems
    ]


def eval_rows(problems: list[dict]) -> list[dict]:
    """Rows for alignfactory eval's math scorer (question / answer), with kind for per-kind breakdowns,
    and a held-out pair for a reward model's accuracy (held_out_pair)."""
    return [
        {"id": p["id"], "question": p["question"], "answer": p["answer"], "kind": p["kind"]}
        | held_out_pair(p)
        for p in problems
    ]


def held_out_pair(p: dict) -> dict:
    """{"chosen", "rejected"}: the worked arithmetic with its answer, and the same worked arithmetic
    whose result is off by 1 to 3 (seeded by the problem's id). The two replies differ only in the
    numbers, so a reward model scores the chosen side higher only if it checks the arithmetic."""
    right = int(p["answer"])
    delta = random.Random(f"pair:{p['id']}").choice((-3, -2, -1, 1, 2, 3))
    wrong = right + delta if right + delta >= 0 else right - delta
    expr = str(p["operands"][0]) + "".join(
        f" {op} {x}" for op, x in zip(p["ops"], p["operands"][1:], strict=True)
    )
    return {
        "chosen": f"{expr} = {right}. The answer is {right}.",
        "rejected": f"{expr} = {wrong}. The answer is {wrong}.",
    }


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write rows as JSON lines, atomically (a reader sees all of the file or none); returns the path."""
    path = Path(path)
    write_jsonl_atomic(path, list(rows))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m alignfactory.ablate.mathset",
        description="Write DIR/train.jsonl (seed rows) and DIR/eval.jsonl (question/answer) that do not leak.",
    )
    ap.add_argument("--train", type=int, required=True, help="training problems")
    ap.add_argument("--eval", type=int, required=True, help="eval problems")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args(argv)
    train, evals = split_problems(args.train, args.eval, args.seed)
    out = Path(args.out)
    paths = {
        "train": str(write_jsonl(train_rows(train), out / "train.jsonl")),
        "eval": str(write_jsonl(eval_rows(evals), out / "eval.jsonl")),
    }
    kinds = {k: sum(p["kind"] == k for p in evals) for k in KINDS}
    print(json.dumps({"train": len(train), "eval": len(evals), "eval_kinds": kinds, "paths": paths}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
