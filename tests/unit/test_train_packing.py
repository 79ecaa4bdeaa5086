"""The shipped CPU SFT profile as it trains: assistant-only loss together with padding-free BFD packing
(pipelines/train_sft_cpu.yaml as it is; only the model, the data, output_dir and max_steps are the
test's), on the tiny random llama. A real batch from the trainer's own dataloader must hold several
conversations in one row, restart position ids at each conversation, keep the conversations from
attending to each other, and carry labels on exactly the assistant turns' content and closing
<|im_end|>."""

import json
import math

import pytest

from alignfactory.train.common import build_trainer, parse, tiny_llama, with_data
from tests.unit.test_train_template import expected_mask

PROFILE = "pipelines/train_sft_cpu.yaml"
CONVS = [
    [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "What is 2+2?\nExplain."},
        {"role": "assistant", "content": "4, because 2 and 2 make 4."},
        {"role": "user", "content": "和 3+3 呢？"},
        {"role": "assistant", "content": "6 ——  same rule.\n\nDone!"},
    ],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [  # no system turn: the template adds SmolLM2's default one, which must stay masked
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Again, louder."},
        {"role": "assistant", "content": "HI!"},
    ],
    [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    [{"role": "user", "content": "Write `x = 1` in Python."}, {"role": "assistant", "content": "x = 1"}],
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(trainer, tokenizer with the model's own template, every batch of the train dataloader)."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("packing")
    tiny = str(tiny_llama(tmp / "tiny"))
    data = tmp / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in CONVS))
    args = parse(
        "sft", PROFILE, ["--model_name_or_path", tiny, "--output_dir", str(tmp / "out"), "--max_steps", "1"]
    )
    trainer = build_trainer("sft", with_data(args, [str(data)]))
    return trainer, AutoTokenizer.from_pretrained(tiny), list(trainer.get_train_dataloader())


def test_the_profile_packs_with_assistant_only_loss(run):
    args = run[0].args  # the parsed profile, as the trainer holds it
    assert (args.assistant_only_loss, args.packing, args.packing_strategy) == (True, True, "bfd")
    assert args.chat_template_path == "rubrics/chat_templates/smollm2_training.jinja"


def segments(batch) -> list[tuple[int, int]]:
    """(start, end) of each conversation in the packed row: where its position ids restart at 0."""
    pos = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(pos) if p == 0]
    return list(zip(starts, [*starts[1:], len(pos)], strict=True))


def test_conversations_are_packed_into_one_row_padding_free(run):
    trainer, _, batches = run
    assert len(trainer.train_dataset) < len(CONVS)  # BFD packed the conversations into fewer rows
    assert sorted(n for row in trainer.train_dataset["seq_lengths"] for n in row) == sorted(
        len(expected_mask(run[1], c)[0]) for c in CONVS
    )
    assert len(batches) == 1
    batch = batches[0]
    assert batch["input_ids"].shape[0] == 1  # one row ...
    assert "attention_mask" not in batch  # ... without padding: sequence boundaries come from position ids
    spans = segments(batch)
    assert len(spans) == len(CONVS)  # position ids restart once per conversation
    for s, e in spans:
        assert batch["position_ids"][0, s:e].tolist() == list(range(e - s))
    assert batch["cu_seq_lens_q"].tolist() == [s for s, _ in spans] + [spans[-1][1]]


def test_labels_are_exactly_each_conversations_assistant_turns(run):
    _, tok, batches = run
    batch = batches[0]
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    want = {}
    for conv in CONVS:
        conv_ids, mask = expected_mask(tok, conv)
        want[tuple(conv_ids)] = [t if m else -100 for t, m in zip(conv_ids, mask, strict=True)]
    seen = []
    for s, e in segments(batch):
        key = tuple(ids[s:e])
        assert key in want, f"packed segment {tok.decode(ids[s:e])!r} is no whole conversation"
        # the assistant's content and its <|im_end|>: label = input id; system, user, headers: -100
        assert labels[s:e] == want[key], tok.decode(ids[s:e])
        seen.append(key)
    assert sorted(seen) == sorted(want)  # each conversation exactly once
    trained = tok.decode([t for t in labels[: segments(batch)[-1][1]] if t != -100])
    for conv in CONVS:
        for m in conv:
            if m["role"] == "assistant":
                assert m["content"] + "<|im_end|>" in trained
    assert "assistant\n" not in trained and "<|im_start|>" not in trained
    assert trained.count("<|im_end|>") == sum(m["role"] == "assistant" for c in CONVS for m in c)


def test_packed_conversations_do_not_attend_to_each_other(run):
    """The model sees the batch as the trainer passes it (no attention mask): each conversation's logits
    in the packed row equal its logits alone."""
    import torch

    trainer, _, batches = run
    batch = batches[0]
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        for s, e in segments(batch):
            alone = model(input_ids=batch["input_ids"][:, s:e]).logits[0]
            torch.testing.assert_close(packed[s:e], alone, atol=1e-4, rtol=1e-4)


def test_training_steps_run_with_a_finite_loss(run):
    trainer = run[0]
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) and x > 0 for x in losses)
    assert trainer.state.global_step == 1
