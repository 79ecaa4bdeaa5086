"""A reward model with TRL's RewardTrainer (Bradley-Terry on chosen vs rejected) on the factory's
preference/ output. The checkpoint is a 1-label AutoModelForSequenceClassification: the `reward`
stage and online DPO's `reward_model` scorer load it."""

from __future__ import annotations


def build(training_args, model_args, train_dataset, callbacks: list):
    from trl import RewardTrainer, get_peft_config, get_quantization_config

    return RewardTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )
