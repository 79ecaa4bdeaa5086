"""Offline DPO with TRL's DPOTrainer on the factory's preference/ output
({"prompt": [...], "chosen": [...], "rejected": [...]}), from the SFT checkpoint; the reference is the
same checkpoint, frozen (or the adapter switched off, with use_peft)."""

TRAINER = "DPOTrainer"  # the trl class common.build_trainer builds with trl_trainer
