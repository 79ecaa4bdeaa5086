"""The training chat template and TRL's assistant-only loss on it (tiny random llama, no Ray)."""

import json

import pytest

from alignfactory.train.common import CHAT_TEMPLATE, build_trainer, parse, tiny_llama, with_data

CONV = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What is 2+2?\nExplain."},
    {"role": "assistant", "content": "4, because 2 and 2 make 4."},
    {"role": "user", "content": "和 3+3 呢？"},
    {"role": "assistant", "content": "6 ——  same rule.\n\nDone!"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(tiny_llama(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


@pytest.mark.parametrize("conv", [CONV, CONV[1:], CONV[:2], CONV[1:3]])
@pytest.mark.parametrize("gen_prompt", [False, True])
def test_training_template_renders_like_the_models_own(tok, conv, gen_prompt):
    ours = tok.apply_chat_template(
        conv, tokenize=False, add_generation_prompt=gen_prompt, chat_template=CHAT_TEMPLATE.read_text()
    )
    assert ours == tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen_prompt)


def expected_mask(tok, conv) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and 1 exactly on the tokens inside an assistant
    turn's content + <|im_end|> (by character offsets, independent of the template's markers)."""
    text = tok.apply_chat_template(conv, tokenize=False)
    spans, pos = [], 0
    for m in conv:
        if m["role"] == "assistant":
            start = text.index("<|im_start|>assistant\n" + m["content"], pos) + len("<|im_start|>assistant\n")
            end = start + len(m["content"]) + len("<|im_end|>")
            spans.append((start, end))
            pos = end
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    mask = [int(any(s <= a and b <= e for s, e in spans)) for a, b in enc["offset_mapping"]]
    return enc["input_ids"], mask


def test_assistant_only_loss_masks_exactly_the_non_assistant_tokens(tiny, tok, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"messages": CONV}, ensure_ascii=False) + "\n")
    args = parse(
        "sft",
        "pipelines/train_sft_cpu.yaml",
        ["--model_name_or_path", tiny, "--output_dir", str(tmp_path / "out"), "--packing", "false"],
    )
    trainer = build_trainer("sft", with_data(args, [str(data)]))
    ex = trainer.train_dataset[0]
    ids, want = expected_mask(tok, CONV)
    assert ex["input_ids"] == ids
    assert [int(x != -100) for x in ex["labels"]] == want  # TRL turns the assistant mask into labels
    trained = tok.decode([t for t, m in zip(ids, want, strict=True) if m])
    assert trained == "4, because 2 and 2 make 4.<|im_end|>6 ——  same rule.\n\nDone!<|im_end|>"
    assert sum(want) < len(want) // 2  # system, both user turns and the role headers are masked
    labels = trainer.data_collator([ex])["labels"][0].tolist()  # what the loss sees
    assert [int(x != -100) for x in labels] == want
    assert [x for x in labels if x != -100] == [t for t, m in zip(ids, want, strict=True) if m]
