"""RunConfig: parts that validate themselves, identity from field metadata, the 0.2 flags as
aliases of spec options, and config.json's flat layout."""

from __future__ import annotations

import pytest

from stepprune.config import RunConfig
from stepprune.registry import SpecError

# The identity of a default run as 0.2 wrote it: folders made then must still resume.
IDENTITY_0_2 = {
    "dataset": "planted", "model": "bundled", "max_new_tokens": 32768, "temperature": 0.6,
    "top_p": 0.95, "seed": 0, "policy": "percentile", "mode": "text", "answer_max_tokens": 512,
    "min_step_chars": 10, "segmenter": "paragraph", "load_in_4bit": False,
    "positions": "original", "interval": 0, "budget": None,
}  # fmt: skip


def test_the_identity_of_a_default_run_is_the_one_0_2_wrote() -> None:
    assert RunConfig.from_flat().identity() == IDENTITY_0_2


def test_mode_options_enter_the_identity_under_their_0_2_keys() -> None:
    kv = RunConfig.from_flat(mode="kv:positions=rerotate").identity()
    assert kv == {**IDENTITY_0_2, "mode": "kv", "positions": "rerotate"}
    online = RunConfig.from_flat(mode="online", interval=16, budget=100).identity()
    assert online == {**IDENTITY_0_2, "mode": "online", "interval": 16, "budget": 100}


def test_a_mode_option_added_since_0_2_enters_the_identity_only_off_its_default() -> None:
    assert RunConfig.from_flat(mode="online:scope=cached").identity()["mode"] == "online"
    assert "scope" not in RunConfig.from_flat(mode="online:scope=cached").identity()
    assert RunConfig.from_flat(mode="online:scope=reasoning").identity()["scope"] == "reasoning"


def test_old_flags_and_spec_options_give_the_same_config() -> None:
    flags = RunConfig.from_flat(mode="kv", positions="rerotate", engine="vllm",
                                tensor_parallel_size=2, gpu_memory_utilization=0.5)  # fmt: skip
    spec = RunConfig.from_flat(mode="kv:positions=rerotate", engine="vllm:tp=2,gpu_memory=0.5")
    assert flags.plan().mode == spec.plan().mode
    assert flags.plan().engine == spec.plan().engine


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"positions": "rerotate"}, "--positions applies to --mode kv only, not --mode text"),
        ({"mode": "kv:positions=original", "positions": "rerotate"}, "both set positions"),
        ({"mode": "online", "interval": -1}, "--interval -1: .*outside the allowed range"),
        ({"tensor_parallel_size": 2}, "--tensor-parallel-size applies to --engine vllm only"),
        ({"samples": 0}, "--samples must be >= 1"),
        ({"thresholds": [1.0]}, "outside \\[0, 1\\)"),
        ({"segmenter": "words"}, "--segmenter 'words'"),
        ({"workers": 0}, "--workers must be >= 1"),
        ({"seed": "x"}, "setting seed='x': expected int"),
        ({"max_new_tokens": 10.7}, "setting max_new_tokens=10.7: expected int"),
        ({"samples": True}, "setting samples=True: expected int"),
        ({"thresholds": [0.1, 0.1000001]}, "0.1 and 0.1000001 are the same to 6 decimals"),
    ],
)
def test_each_part_refuses_its_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig.from_flat(**settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "magic"}, "--mode: unknown mode 'magic'"),
        ({"scorer": "attention:bogus=1"}, "--scorer: .*unknown option 'bogus'"),
        ({"mode": "online", "scorer": "entropy"}, "--mode online scores the cached steps"),
        ({"engine": "vllm:tp=0"}, "--engine: .*tp=0 is outside the allowed range"),
    ],
)
def test_the_plan_names_the_option_of_a_bad_spec(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig.from_flat(**settings).plan()


def test_config_json_is_flat_with_names_and_specs() -> None:
    flat = RunConfig.from_flat(mode="kv:positions=rerotate", limit=2).to_json()
    assert flat["mode"] == "kv" and flat["mode_spec"] == "kv:positions=rerotate"
    assert flat["engine"] == "hf" and flat["scorer"] == "attention" and flat["limit"] == 2
    assert flat["model"] == "bundled" and flat["thresholds"] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    online = RunConfig.from_flat(mode="online").to_json()
    assert online["scorer"] == "attention:query=probe"


def test_the_plan_controls_the_scorer_except_online() -> None:
    assert RunConfig.from_flat().plan().control == (
        "random-control:seed=0,of=attention:query=last,layers=all,heads=mean,agg=sum,sink=keep"
    )
    assert RunConfig.from_flat(mode="online").plan().control is None
    assert RunConfig.from_flat(control=False).plan().control is None


def test_equal_thresholds_merge_and_numbers_of_either_kind_are_taken() -> None:
    config = RunConfig.from_flat(thresholds=[0.5, 0.1, 0.5], temperature=1, seed=3)
    assert config.strategies.thresholds == (0.1, 0.5) and config.sampling.temperature == 1


def test_an_unknown_setting_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown run settings: colour"):
        RunConfig.from_flat(colour="red")
    with pytest.raises(SpecError):
        RunConfig.from_flat(policy="nosuch").plan()
