"""Shared test setup: no hub access ever; quiet Ray; small, fast defaults."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("ALIGNFACTORY_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
