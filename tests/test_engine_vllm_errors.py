"""vLLM's errors, without vLLM: a broken STEPPRUNE_VLLM_PYTHON is named before anything is
loaded, and a worker that dies is reported by how it ended and its last error line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import stepprune.engines.vllm as vllm
from stepprune.engines.vllm import VLLMEngineConfig, VLLMError, VLLMProcess


@pytest.mark.parametrize(
    ("python", "says"),
    [
        ("/bin/false", "not a working Python (exit 1)"),
        (sys.executable, None),  # replaced below by a Python without vLLM
        ("/etc/hostname", "cannot run it"),
    ],
)
def test_a_broken_vllm_python_is_named_at_the_check(monkeypatch, tmp_path, python, says) -> None:
    if says is None:  # a Python that runs but has no vLLM: a link to this one, under another name
        if __import__("importlib").util.find_spec("vllm") is not None:
            pytest.skip("this Python has vLLM")
        python = str(tmp_path / "python")
        Path(python).symlink_to(sys.executable)
        says = "this Python cannot import vllm"
    monkeypatch.setenv("STEPPRUNE_VLLM_PYTHON", python)
    with pytest.raises(VLLMError) as refused:
        VLLMEngineConfig().check()
    message = str(refused.value)
    assert message.startswith(f"STEPPRUNE_VLLM_PYTHON={python}: ") and says in message, message


WORKER = """
import os, signal, sys
print("INFO starting the engine", file=sys.stderr)
print("RuntimeError: CUDA out of memory. Tried to allocate 2 GiB", file=sys.stderr)
print("INFO 12-06 shutting down the tokenizer pool", file=sys.stderr, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_dead_worker_is_reported_by_how_it_ended(monkeypatch, tmp_path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    monkeypatch.setattr(vllm, "WORKER", worker)
    with pytest.raises(VLLMError) as ended:
        VLLMProcess([], sys.executable, {})
    message = str(ended.value)
    assert message.startswith("the vLLM process ended (killed by SIGKILL)"), message
    assert message.endswith("RuntimeError: CUDA out of memory. Tried to allocate 2 GiB")
    assert "tokenizer pool" not in message


def test_vllm_with_online_mode_is_refused_before_anything_starts(tmp_path) -> None:
    """Online mode decodes on transformers: vLLM would start unused and label the records."""
    from typer.testing import CliRunner

    from stepprune.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", "--engine", "vllm", "--mode", "online", "--limit", "1", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --engine vllm cannot decode --mode online"), line
    assert not out.exists()


class _Saved:
    """A model and tokenizer that count their conversions (a config.json each)."""

    def __init__(self) -> None:
        self.config, self.saves = type("C", (), {})(), 0

    def save_pretrained(self, folder) -> None:
        self.saves += 1
        (Path(folder) / "config.json").write_text("{}")


def test_the_converted_gguf_is_keyed_by_content(monkeypatch, tmp_path) -> None:
    """Another GGUF of the same name is converted anew, never decoded by the first's copy."""
    from stepprune.engines.vllm import model_folder_for_vllm

    monkeypatch.setenv("STEPPRUNE_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, content in ((a, b"first model"), (b, b"second model")):
        folder.mkdir()
        (folder / "model.gguf").write_bytes(content)
    model, tokenizer = _Saved(), _Saved()
    first = model_folder_for_vllm(model, tokenizer, str(a), "model.gguf")
    assert model_folder_for_vllm(model, tokenizer, str(a), "model.gguf") == first
    assert model.saves == 1
    second = model_folder_for_vllm(model, tokenizer, str(b), "model.gguf")
    assert second != first and model.saves == 2
    (b / "model.gguf").write_bytes(b"first model")  # now the same content as a's
    assert model_folder_for_vllm(model, tokenizer, str(b), "model.gguf") == first
