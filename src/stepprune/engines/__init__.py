"""Engines continue token-id sequences: ``hf`` (transformers) and ``vllm`` (vLLM in a process
of its own). See ``engines.base``."""

from stepprune.engines.base import ENGINES, Continuation, Engine, SamplingConfig
from stepprune.engines.hf import HFEngine
from stepprune.engines.vllm import VLLMEngine, VLLMError, VLLMOptions

__all__ = [
    "ENGINES",
    "Continuation",
    "Engine",
    "HFEngine",
    "SamplingConfig",
    "VLLMEngine",
    "VLLMError",
    "VLLMOptions",
]
