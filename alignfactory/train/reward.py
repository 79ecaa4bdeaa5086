"""A reward model with TRL's RewardTrainer (Bradley-Terry on chosen vs rejected) on the factory's
preference/ output. The checkpoint is a 1-label AutoModelForSequenceClassification: the `reward`
stage and online DPO's `reward_model` scorer load it."""

from __future__ import annotations


def build(training_args, model_args, train_dataset, callbacks: list):
    from trl import RewardTrainer

    from alignfactory.train.common import trl_trainer

    return trl_trainer(RewardTrainer, training_args, model_args, train_dataset, callbacks)
