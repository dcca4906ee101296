"""De-quantised copies of GGUF models, saved once and reused.

transformers de-quantises a GGUF file at every load: about 13 s for the bundled SmolLM2-135M on one
quiet core (28 s without ``models._gguf_conversion``; much more on a busy core), where loading the
same weights from a saved folder takes under a second. The copy is the model as transformers loaded
it in float32 (weights and logits identical to the GGUF's, without the GGUF quantiser) with its
tokenizer. It serves two readers: ``models.load_model`` (float32 loads; other dtypes keep reading
the GGUF, whose packed kernels compute differently) and the vLLM engine, whose CPU backend cannot
read GGUF.

Copies live under ``$STEPPRUNE_CACHE/gguf-models`` (default ``~/.cache/stepprune``), keyed by
the GGUF's content: another file of the same name is never read through this copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing transformers costs seconds; the CLI parses without it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def cache_root() -> Path:
    """``$STEPPRUNE_CACHE``, default ``~/.cache/stepprune``."""
    return Path(os.environ.get("STEPPRUNE_CACHE", Path.home() / ".cache" / "stepprune"))


def copy_folder(gguf: Path) -> Path:
    """Where the de-quantised copy of ``gguf`` is (or would be) saved."""
    cache = cache_root()
    name = gguf.name.removesuffix(".gguf")
    return cache / "gguf-models" / f"{name}-{gguf_digest(gguf, cache)[:16]}"


def saved_copy(gguf: Path) -> Path | None:
    """The finished copy of ``gguf``, or None when there is none yet (or the cache is
    unreadable)."""
    try:
        folder = copy_folder(gguf)
    except OSError:
        return None
    return folder if (folder / "config.json").exists() else None


def save_copy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, gguf: Path) -> Path:
    """Save ``model`` (loaded from ``gguf``) and ``tokenizer`` as ``gguf``'s copy; return its
    folder. The copy appears whole or not at all (saved aside, then renamed), so a killed save
    or two runs saving at once never leave a half copy in use. Raises OSError (no room, a
    read-only cache); the model is left as it was either way."""
    folder = copy_folder(gguf)
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
    try:
        # Saved without the GGUF quantiser, so that the copy reads as a plain float model.
        quantizer = getattr(model, "hf_quantizer", None)
        config_quantization = getattr(model.config, "quantization_config", None)
        model.hf_quantizer = None
        if config_quantization is not None:
            del model.config.quantization_config
        try:
            model.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
        finally:
            model.hf_quantizer = quantizer
            if config_quantization is not None:
                model.config.quantization_config = config_quantization
        try:
            partial.rename(folder)
        except OSError:
            if not (folder / "config.json").exists():  # not another run's finished copy
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def gguf_digest(path: Path, cache: Path) -> str:
    """SHA-256 of a GGUF file's content, remembered in ``cache`` by path, size and modification
    time (hashing gigabytes at every start would cost seconds)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = cache / "gguf-models" / "gguf-digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if isinstance(memo, dict) and isinstance(memo.get(key), str):
        return memo[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    memo = {**(memo if isinstance(memo, dict) else {}), key: digest.hexdigest()}
    with contextlib.suppress(OSError):  # a read-only cache: hashed again next time
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".{memo_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    return digest.hexdigest()
