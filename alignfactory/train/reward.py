"""A reward model with TRL's RewardTrainer (Bradley-Terry on chosen vs rejected) on the factory's
preference/ output. The checkpoint is a 1-label AutoModelForSequenceClassification: the `reward`
stage and online DPO's `reward_model` scorer load it."""

TRAINER = "RewardTrainer"  # the trl class common.build_trainer builds with trl_trainer
