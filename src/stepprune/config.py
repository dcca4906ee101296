"""The settings of one run (``RunConfig``), written to ``config.json``, and what of them must
match for a run to resume in an existing folder (``RunConfig.identity``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepprune.decoding import SamplingConfig
from stepprune.engines.vllm import VLLMOptions
from stepprune.problems import dataset_name
from stepprune.steps import DEFAULT_MIN_STEP_CHARS, SEGMENTERS

DEFAULT_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
MODE_NAMES = ("text", "kv", "online")
# Engines for plain decoding (traces, text-mode answers): transformers, or vLLM in a process.
ENGINE_NAMES = ("hf", "vllm")
# The scorer when none is given: the notebook's, except online, which can only score the
# cached steps with a probe (Think Clearly).
DEFAULT_SCORER = {"text": "attention", "kv": "attention", "online": "attention:query=probe"}


@dataclass
class RunConfig:
    """Every setting of a run; written to ``config.json``. Validated on construction."""

    model: str = "bundled"
    dataset: str = "planted"
    data_dir: str | None = None
    limit: int | None = None
    samples: int = 1
    thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    max_new_tokens: int = 32768
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    load_in_4bit: bool = False
    scorer: str | None = None
    policy: str = "percentile"
    mode: str = "text"
    engine: str = "hf"
    answer_max_tokens: int = 512
    min_step_chars: int = DEFAULT_MIN_STEP_CHARS
    segmenter: str = "paragraph"
    positions: str = "original"
    interval: int = 0
    budget: int | None = None
    control: bool = True
    grade_timeout: float = 10.0
    out: str | None = None
    # Where the work runs; not part of a folder's identity (the records are the same).
    workers: int = 1
    ray_address: str | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {self.samples}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.answer_max_tokens < 1:
            raise ValueError(f"--answer-max-tokens must be >= 1, got {self.answer_max_tokens}")
        if self.grade_timeout <= 0:
            raise ValueError(f"grade timeout must be > 0 s, got {self.grade_timeout}")
        if not self.thresholds:
            raise ValueError("--thresholds: give at least one threshold")
        for t in self.thresholds:
            if not 0.0 <= t < 1.0:
                raise ValueError(f"--thresholds: {t} is outside [0, 1)")
        if self.interval < 0:
            raise ValueError(f"--interval must be >= 0, got {self.interval}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"--budget must be >= 1, got {self.budget}")
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"--segmenter {self.segmenter!r}: choose from {', '.join(SEGMENTERS)}")
        if self.engine not in ENGINE_NAMES:
            raise ValueError(f"--engine {self.engine!r}: choose from {', '.join(ENGINE_NAMES)}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.engine != "vllm" and (
            self.tensor_parallel_size != 1 or self.gpu_memory_utilization is not None
        ):
            raise ValueError(
                "--tensor-parallel-size and --gpu-memory-utilization apply to --engine vllm only"
            )
        self.vllm_options()  # validates them
        if self.mode not in MODE_NAMES:
            raise ValueError(f"--mode {self.mode!r}: choose from {', '.join(MODE_NAMES)}")
        if self.mode != "kv" and self.positions != "original":
            raise ValueError(f"--positions applies to --mode kv only, not --mode {self.mode}")
        if self.mode != "online" and (self.budget is not None or self.interval):
            raise ValueError("--budget and --interval apply to --mode online only")
        self.sampling()  # validates max_new_tokens, temperature, top_p
        self.scorer = self.scorer or DEFAULT_SCORER[self.mode]
        # Sorted, without duplicates, rounded like threshold keys (0.1 * 3 is 0.3).
        self.thresholds = sorted({round(float(t), 6) for t in self.thresholds})

    def vllm_options(self) -> VLLMOptions:
        return VLLMOptions(
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
        )

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.max_new_tokens, self.temperature, self.top_p)

    def output_dir(self) -> Path:
        """``--out``, or ``runs/<dataset>-<model>`` named from the config."""
        if self.out:
            return Path(self.out)
        model = Path(self.model.rstrip("/")).name.removesuffix(".gguf")
        return Path("runs") / f"{dataset_name(self.dataset)}-{model}"

    def identity(self) -> dict[str, Any]:
        """Settings that must match to resume in an existing run folder.

        Not the scorer, thresholds, samples or limit: traces are reused across those. The
        dataset by name, not by the spelling of its path; its content is checked per problem
        against the traces and records in the folder (``experiment``).
        """
        keys = ["model", "max_new_tokens", "temperature", "top_p", "seed"]
        keys += ["policy", "mode", "answer_max_tokens", "min_step_chars", "segmenter"]
        keys += ["load_in_4bit", "positions", "interval", "budget"]
        return {"dataset": dataset_name(self.dataset), **{k: getattr(self, k) for k in keys}}
