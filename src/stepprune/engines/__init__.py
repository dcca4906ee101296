"""Engines continue token-id sequences: ``hf`` (transformers). See ``engines.base``."""

from stepprune.engines.base import ENGINES, Continuation, Engine, SamplingConfig
from stepprune.engines.hf import HFEngine

__all__ = ["ENGINES", "Continuation", "Engine", "HFEngine", "SamplingConfig"]
