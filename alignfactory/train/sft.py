"""SFT with TRL's SFTTrainer on the factory's sft/ output ({"messages": [...]}).

Loss on assistant tokens only (`assistant_only_loss: true` + the training chat template with
{% generation %} markers, rubrics/chat_templates/smollm2_training.jinja), packing with best-fit
decreasing (padding-free) where the config asks for it. LoRA/QLoRA from the ModelConfig fields
(use_peft, lora_r, load_in_4bit, ...), exactly as `trl sft` reads them.
"""

TRAINER = "SFTTrainer"  # the trl class common.build_trainer builds with trl_trainer
