"""Training on the factory's output with TRL (built against TRL 1.16):

common.py       TRL config parsing (the same YAML `trl sft|dpo|reward --config` reads), model paths
sft.py dpo.py reward.py   the TRL trainer for each step, built from that config
online_dpo.py   sample N from the policy, score, best/worst pair, DPO step against a frozen reference
scorers.py      reward model, math answer, code tests (sandbox/), AutoIF functions, judge
ray_launcher.py the same code on Ray Train workers (TorchTrainer), checkpoints, resume
evaluate.py     before/after evaluation on the rows a run held out
"""
