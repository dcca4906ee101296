"""Chat format and model resolution, on the real R1-distill, Qwen3 and Qwen2.5 tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stepprune.models import (
    MATH_INSTRUCTION,
    ChatFormat,
    ModelLoadError,
    bundled_gguf_path,
    check_model_options,
    load_model,
    resolve_model_source,
)


def test_r1_prompt_is_the_exact_template_and_opens_thinking(r1_tokenizer) -> None:
    fmt = ChatFormat.from_tokenizer(r1_tokenizer)
    assert fmt.is_thinking and (fmt.think_open_id, fmt.think_close_id) == (151648, 151649)
    ids = fmt.prompt_ids("What is 1+1?")
    question = r1_tokenizer.encode(f"What is 1+1?\n\n{MATH_INSTRUCTION}", add_special_tokens=False)
    # bos, <｜User｜>, question, <｜Assistant｜>, <think>, "\n"; bos written once, by the template.
    assert ids == [151646, 151644, *question, 151645, 151648, 198]
    assert fmt.opens_reasoning(ids)
    assert fmt.answer_cue_ids() == [151649, 271]  # "</think>", "\n\n"


def test_qwen3_prompt_leaves_thinking_to_the_model(qwen3_tokenizer) -> None:
    fmt = ChatFormat.from_tokenizer(qwen3_tokenizer)
    ids = fmt.prompt_ids("What is 1+1?")
    assert fmt.is_thinking and fmt.think_close_id == 151668
    assert ids[-3:] == [151644, 77091, 198]  # <|im_start|>assistant\n
    assert not fmt.opens_reasoning(ids)


def test_qwen25_is_not_a_thinking_model(qwen25_tokenizer) -> None:
    fmt = ChatFormat.from_tokenizer(qwen25_tokenizer)
    assert not fmt.is_thinking and fmt.think_close_id is None
    assert fmt.answer_cue_text() == "The answer is \\boxed{"


def test_model_sources(tmp_path: Path) -> None:
    assert resolve_model_source("org/name") == ("org/name", None)
    assert resolve_model_source(str(tmp_path)) == (str(tmp_path), None)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_source(str(gguf)) == (str(tmp_path), "m.gguf")
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        resolve_model_source(str(tmp_path / "missing.gguf"))
    plain = tmp_path / "weights.bin"
    plain.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="expected a model directory"):
        resolve_model_source(str(plain))


def test_bundled_model_file_is_found() -> None:
    path = bundled_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_4bit_on_cpu_is_refused_clearly(tiny_r1_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="needs a CUDA device"):
        load_model(str(tiny_r1_dir), device="cpu", load_in_4bit=True)


def test_bad_dtype_is_refused(tiny_r1_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="--dtype float8"):
        load_model(str(tiny_r1_dir), device="cpu", dtype="float8")


def test_offline_missing_hub_model_is_one_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_model("no-such-org/no-such-model", device="cpu")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("bogus", "--device bogus: expected auto, cpu, cuda, cuda:N or mps"),
        ("cuda:x", "--device cuda:x: expected"),
        ("meta", "--device meta: expected"),
    ],
)
def test_bad_device_is_refused_before_loading(device: str, message: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        check_model_options(device)
    assert str(caught.value).startswith(message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="--device cuda:1: CUDA is not available"):
        check_model_options("cuda:1")


def test_model_options_are_checked_without_loading() -> None:
    assert check_model_options("cpu", "float32") == "cpu"
    with pytest.raises(ModelLoadError, match="--dtype fp8: expected auto, float32"):
        check_model_options("cpu", "fp8")
    with pytest.raises(ModelLoadError, match="--load-in-4bit needs a CUDA device"):
        check_model_options("cpu", "auto", load_in_4bit=True)


@pytest.mark.parametrize("content", [None, "{", "not a gguf"])
def test_a_model_that_cannot_be_loaded_is_one_line(tmp_path: Path, content: str | None) -> None:
    if content == "not a gguf":
        target = tmp_path / "bad.gguf"
        target.write_text(content)
    else:
        target = tmp_path / "model"
        target.mkdir()
        if content is not None:
            (target / "config.json").write_text(content)
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(target), device="cpu")
    message = str(caught.value)
    assert message.startswith(f"model {str(target)!r} cannot be loaded: ") and "\n" not in message


def _tiny_gguf(path: Path) -> Path:
    """A GGUF file with a few metadata fields and one tensor (gguf's own writer)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list([f"token{i}" for i in range(50)])
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_conversion_reads_each_file_once_and_restores_gguf(tmp_path: Path) -> None:
    """Inside one load, transformers' three openings of a GGUF share one reader, with the
    fields and tensors a fresh reader finds, and the tensor-name table is built once; after the
    load, gguf is as it was."""
    import gguf

    from stepprune.models import _gguf_conversion

    path = str(_tiny_gguf(tmp_path / "tiny.gguf"))
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    plain = gguf.GGUFReader(path)
    with _gguf_conversion():
        shared = gguf.GGUFReader(path)
        assert gguf.GGUFReader(path) is shared
        assert list(shared.fields) == list(plain.fields)
        assert shared.fields["tokenizer.ggml.tokens"].contents() == [f"token{i}" for i in range(50)]
        assert [t.name for t in shared.tensors] == ["token_embd.weight"]
        assert shared.tensors[0].data.tolist() == plain.tensors[0].data.tolist()
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
        assert gguf.get_tensor_name_map(arch, 2).mapping == name_map(arch, 2).mapping
    assert gguf.GGUFReader is reader_class and gguf.get_tensor_name_map is name_map
    assert gguf.GGUFReader(path) is not shared
