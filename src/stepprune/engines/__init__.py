"""Engines continue token-id sequences: ``hf`` (transformers) and ``vllm`` (vLLM in a process
of its own). See ``engines.base``."""

from stepprune.engines.base import (
    ENGINES,
    Continuation,
    Engine,
    EngineConfig,
    ModelView,
    SamplingConfig,
)
from stepprune.engines.hf import HFEngine, HFEngineConfig
from stepprune.engines.vllm import VLLMEngine, VLLMEngineConfig, VLLMError, VLLMOptions

__all__ = [
    "ENGINES",
    "Continuation",
    "Engine",
    "EngineConfig",
    "HFEngine",
    "HFEngineConfig",
    "ModelView",
    "SamplingConfig",
    "VLLMEngine",
    "VLLMEngineConfig",
    "VLLMError",
    "VLLMOptions",
]
