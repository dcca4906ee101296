"""Optional pieces (vLLM, Ray) in tests: skipped where they are not installed, except in CI,
which installs them and sets ``STEPPRUNE_REQUIRE_EXTRAS=1`` so that a missing one fails."""

from __future__ import annotations

import importlib.util
import os

import pytest

from stepprune.engines.vllm import VLLMError, vllm_python

REQUIRED = os.environ.get("STEPPRUNE_REQUIRE_EXTRAS") == "1"


def _missing(what: str) -> None:
    if REQUIRED:
        pytest.fail(f"{what} is not installed, and STEPPRUNE_REQUIRE_EXTRAS=1")
    pytest.skip(f"{what} is not installed")


def require_vllm() -> str:
    """The Python that runs vLLM (``make vllm``)."""
    try:
        return vllm_python()
    except VLLMError:
        _missing("vLLM (make vllm)")
        raise  # unreachable: skip and fail raise


def require_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        _missing("Ray (make ray)")
