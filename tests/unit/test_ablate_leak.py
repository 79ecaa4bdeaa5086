"""alignfactory.ablate.leak: exact and contained questions are found whatever their spacing, case and
punctuation; templated items that only share boilerplate are not; a reworded copy with the same numbers
and answer is; SFT, preference and prompt rows are all read, rows without a user turn skipped."""

from __future__ import annotations

from alignfactory.ablate.leak import (
    LEAK_CHECK,
    find_leaks,
    normalize_question,
    question_numbers,
)

Q = "Sara had 25 stickers and gave 9 to her brother. How many stickers does she have left?"


def sft(user: str, assistant: str = "Done.") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def whys(leaks: list[dict]) -> list[tuple]:
    return [(x["eval_id"], x["row_index"], x["why"]) for x in leaks]


def test_normalize_and_numbers():
    assert normalize_question("  What IS 17+25 ?! ") == normalize_question("what is 17 + 25")
    assert normalize_question("Ｗｈａｔ　is 1,000 − 3.50?") == "what is 1000 - 3.5"
    assert normalize_question("What is 17 + 25?") != normalize_question("What is 17 - 25?")
    assert normalize_question("Sara's two-step") == normalize_question("saras two step")
    assert question_numbers("He paid $1,000 for 3.50 kg, then .5 more and 007") == ("1000", "3.5", "0.5", "7")
    assert question_numbers("no numbers here") == ()
    assert isinstance(LEAK_CHECK, str) and "\n" not in LEAK_CHECK and LEAK_CHECK


def test_same_question_with_other_spacing_case_and_punctuation():
    train = [
        sft("Unrelated: name three colors."),
        sft("  sara HAD 25 stickers, and gave 9 to her brother how many\nstickers does she have left "),
    ]
    assert whys(find_leaks([{"id": "e1", "question": Q, "answer": "16"}], train)) == [
        ("e1", 1, "same_question")
    ]


def test_short_question_only_when_equal():
    train = [sft("What is 17 + 25?"), sft("Explain: what is 17 + 25? Then add 3 and say why.")]
    leaks = find_leaks([{"id": "a", "question": "what is 17+25", "answer": "99"}], train)
    assert whys(leaks) == [("a", 0, "same_question")]  # too short to count as contained in row 1


def test_question_inside_a_longer_training_prompt():
    train = [
        sft("Solve the following problem step by step.\n\n" + Q.upper() + "\n\nEnd with 'The answer is'.")
    ]
    assert whys(find_leaks([{"id": "e", "question": Q}], train)) == [("e", 0, "question_inside")]


def test_inside_needs_whole_tokens():
    # "... gave 9 to her brother" must not match "... gave 95 to her brothers"
    train = [sft("Sara had 25 stickers and gave 95 to her brothers. How many are left?")]
    q = "Sara had 25 stickers and gave 9 to her brother"
    assert find_leaks([{"id": "e", "question": q, "answer": "1"}], train) == []


def test_same_template_different_numbers_is_not_a_leak():
    train = [
        sft(
            "Sara had 31 stickers and gave 4 to her brother. How many stickers does she have left?",
            "The answer is 27.",
        ),
        sft(
            "Tom had 25 marbles and gave 7 to his brother. How many marbles does he have left?",
            "The answer is 18.",
        ),
    ]
    assert find_leaks([{"id": "e", "question": Q, "answer": "16"}], train) == []


def test_same_numbers_and_answer_in_reworded_question():
    train = [
        sft(
            "A shop had 25 kites and sold 9 of them. How many kites are left?",
            "25 - 9 = 16. The answer is 16.",
        )
    ]
    assert whys(find_leaks([{"id": "e", "question": Q, "answer": "16"}], train)) == [
        ("e", 0, "numbers_and_answer")
    ]
    # the answer may come from the row's answer field (a seed row) rather than a turn
    seed = [
        {
            "messages": [{"role": "user", "content": "Kites in stock: 25; sold today: 9. How many remain?"}],
            "answer": "16",
        }
    ]
    assert whys(find_leaks([{"id": "e", "question": Q, "answer": "16"}], seed)) == [
        ("e", 0, "numbers_and_answer")
    ]


def test_same_numbers_different_answer_is_not_a_leak():
    train = [
        sft(
            "A shop had 25 kites and got 9 more. How many kites does it have?",
            "25 + 9 = 34. The answer is 34.",
        )
    ]
    assert find_leaks([{"id": "e", "question": Q, "answer": "16"}], train) == []


def test_numbers_must_be_in_one_user_turn_and_answer_beyond_them():
    # the question's numbers split over two user turns: not the same problem
    split = {
        "messages": [
            {"role": "user", "content": "I have 25."},
            {"role": "assistant", "content": "16"},
            {"role": "user", "content": "And 9?"},
        ]
    }
    # a repeated number counts as a multiset: (25, 25) is not inside a turn with one 25
    twice = [{"id": "t", "question": "Add 25 and 25.", "answer": "50"}]
    assert find_leaks([{"id": "e", "question": Q, "answer": "16"}], [split]) == []
    assert find_leaks(twice, [sft("Add 25 to something.", "50")]) == []
    # the answer equal to a question number needs a second copy of it in the row
    zero = [{"id": "z", "question": "What is 5 + 0 plus 0?", "answer": "5"}]
    assert find_leaks(zero, [sft("Count 5 and 0 and 0 twice.", "ok")]) == []
    # fewer than two numbers: no signature check
    one = [{"id": "o", "question": "Double 8.", "answer": "16"}]
    assert find_leaks(one, [sft("Take 8 apples.", "16")]) == []


def test_preference_and_prompt_rows_are_read():
    pref = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": Q}],
        "chosen": [{"role": "assistant", "content": "16"}],
        "rejected": [{"role": "assistant", "content": "15"}],
    }
    prompt_row = {"prompt": [{"role": "user", "content": Q.lower()}]}
    prompt_str = {"prompt": Q}
    reworded = {
        "prompt": [{"role": "user", "content": "Kites: 25 in stock, 9 sold. Left?"}],
        "chosen": [{"role": "assistant", "content": "16"}],
        "rejected": [{"role": "assistant", "content": "34"}],
    }
    leaks = find_leaks([{"id": "e", "question": Q, "answer": "16"}], [pref, prompt_row, prompt_str, reworded])
    assert whys(leaks) == [
        ("e", 0, "same_question"),
        ("e", 1, "same_question"),
        ("e", 2, "same_question"),
        ("e", 3, "numbers_and_answer"),
    ]


def test_rows_without_user_turns_are_skipped():
    rows = [
        {"messages": [{"role": "assistant", "content": Q + " 16"}]},
        {"messages": []},
        {"chosen": [{"role": "assistant", "content": Q}], "rejected": []},
        {"text": Q},
        "not a row",
        sft(Q),
    ]
    assert whys(find_leaks([{"id": "e", "question": Q, "answer": "16"}], rows)) == [("e", 5, "same_question")]


def test_eval_item_shapes_and_ids():
    train = [sft(Q)]
    items = [
        {"prompt": Q},  # no id: its index
        {"id": "m", "prompt": [{"role": "user", "content": Q}]},
        {"id": "clean", "question": "Name a prime number larger than 10 and smaller than 20."},
    ]
    leaks = find_leaks(items, train)
    assert [(x["eval_id"], x["eval_index"], x["why"]) for x in leaks] == [
        (0, 0, "same_question"),
        ("m", 1, "same_question"),
    ]
    assert find_leaks([], train) == [] and find_leaks(items, []) == []


def test_one_report_per_row_strongest_reason():
    # the row has the question verbatim and its numbers/answer: reported once, as same_question
    train = [sft(Q, "25 - 9 = 16. The answer is 16.")]
    assert whys(find_leaks([{"id": "e", "question": Q, "answer": "16"}], train)) == [
        ("e", 0, "same_question")
    ]
