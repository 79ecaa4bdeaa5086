"""Shared test setup: no hub access ever; quiet Ray; small, fast defaults."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("ALIGNFACTORY_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# S3 and GCS test servers (session-scoped, started on first use): registered here so that unit and
# integration modules share one of each
from tests.object_store import gcs_server, s3_server  # noqa: E402, F401
