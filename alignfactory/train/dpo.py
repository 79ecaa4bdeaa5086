"""Offline DPO with TRL's DPOTrainer on the factory's preference/ output
({"prompt": [...], "chosen": [...], "rejected": [...]}), from the SFT checkpoint; the reference is the
same checkpoint, frozen (or the adapter switched off, with use_peft)."""

from __future__ import annotations


def build(training_args, model_args, train_dataset, callbacks: list):
    from trl import DPOTrainer

    from alignfactory.train.common import trl_trainer

    return trl_trainer(DPOTrainer, training_args, model_args, train_dataset, callbacks)
