"""SFT with TRL's SFTTrainer on the factory's sft/ output ({"messages": [...]}).

Loss on assistant tokens only (`assistant_only_loss: true` + the training chat template with
{% generation %} markers, rubrics/chat_templates/smollm2_training.jinja), packing with best-fit
decreasing (padding-free) where the config asks for it. LoRA/QLoRA from the ModelConfig fields
(use_peft, lora_r, load_in_4bit, ...), exactly as `trl sft` reads them.
"""

from __future__ import annotations


def build(training_args, model_args, train_dataset, callbacks: list):
    from trl import SFTTrainer

    from alignfactory.train.common import trl_trainer

    return trl_trainer(SFTTrainer, training_args, model_args, train_dataset, callbacks)
