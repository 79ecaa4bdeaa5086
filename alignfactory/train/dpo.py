"""Offline DPO with TRL's DPOTrainer on the factory's preference/ output
({"prompt": [...], "chosen": [...], "rejected": [...]}), from the SFT checkpoint; the reference is the
same checkpoint, frozen (or the adapter switched off, with use_peft)."""

from __future__ import annotations


def build(training_args, model_args, train_dataset, callbacks: list):
    from trl import DPOTrainer, get_peft_config, get_quantization_config

    return DPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        quantization_config=get_quantization_config(model_args),  # QLoRA: load_in_4bit + use_peft
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )
