"""The settings of one run (``RunConfig``), grouped into parts that each validate themselves.

    RunConfig = model (ModelSettings) + data (DataSettings) + sampling (SamplingConfig)
              + strategies (StrategySettings) + placement (Placement) + seed, timeout, out

``RunConfig.plan()`` builds the strategies the specs name, once (``RunPlan``): the driver
checks them before anything is loaded or written and hands the same plan to every worker.
What must match for a run to resume in an existing folder (``identity``) is marked on the
fields themselves (``IDENTITY``). ``config.json`` holds the settings flat, under the names
the CLI options have (``to_json``), as before the parts existed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepprune.decoding import SamplingConfig
from stepprune.engines import ENGINES, EngineConfig
from stepprune.models import check_model_options, resolved_dtype
from stepprune.modes import MODES, Mode
from stepprune.policies import POLICIES, PruningPolicy
from stepprune.problems import dataset_name
from stepprune.registry import Registry, SpecError, parse_spec
from stepprune.runfolder import control_spec
from stepprune.scorers import SCORERS, Scorer
from stepprune.steps import DEFAULT_MIN_STEP_CHARS, Segmenter

DEFAULT_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
# The scorer when none is given: the notebook's, except online, which can only score the
# cached steps with a probe (Think Clearly).
DEFAULT_SCORER = "attention"
DEFAULT_ONLINE_SCORER = "attention:query=probe"
# Folders made before modes took spec options have these identity keys: a mode without the
# option records its default, so those folders still resume.
LEGACY_MODE_OPTIONS: dict[str, Any] = {"positions": "original", "interval": 0, "budget": None}

#: Field metadata: the setting is part of a run folder's identity (under this key).
IDENTITY = "identity"


def _identity(name: str) -> dict[str, str]:
    return {IDENTITY: name}


def check_types(part: Any) -> None:
    """Refuse a setting of the wrong type (``seed="x"``, ``max_new_tokens=10.7``) given in
    Python; the CLI's parser converts its own."""
    hints = typing.get_type_hints(type(part))
    for f in dataclasses.fields(part):
        value, expected = getattr(part, f.name), hints[f.name]
        origin = typing.get_origin(expected)
        if origin not in (None, typing.Union, types.UnionType):
            continue  # a container (thresholds): its items are checked where it is used
        allowed = typing.get_args(expected) if origin else (expected,)
        allowed = tuple(t for t in allowed if isinstance(t, type))
        if float in allowed:
            allowed += (int,)
        if not allowed or value is None and type(None) in allowed:
            continue
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if wrong_bool or not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed if t is not type(None))
            raise ValueError(f"setting {f.name}={value!r}: expected {names}")


def _at_least(option: str, value: float, minimum: float) -> None:
    if not value >= minimum:  # also refuses nan, which compares false
        raise ValueError(f"{option} must be >= {minimum:g}, got {value}")


@dataclass(frozen=True)
class ModelSettings:
    """Which model, on which device, in which dtype (checked without loading anything)."""

    name: str = field(default="bundled", metadata=_identity("model"))
    device: str = "auto"
    dtype: str = "auto"
    load_in_4bit: bool = field(default=False, metadata=_identity("load_in_4bit"))

    def __post_init__(self) -> None:
        check_types(self)
        check_model_options(self.device, self.dtype, self.load_in_4bit)

    def dtype_name(self) -> str:
        """The weights' dtype as resolved on this machine: part of a folder's identity, so
        that bfloat16 and float32 traces do not mix in one folder."""
        if self.load_in_4bit:
            return "nf4"
        return resolved_dtype(self.dtype, check_model_options(self.device, self.dtype))


@dataclass(frozen=True)
class DataSettings:
    """Which problems and how many samples (traces) of each."""

    dataset: str = "planted"
    data_dir: str | None = None
    limit: int | None = None
    samples: int = 1

    def __post_init__(self) -> None:
        check_types(self)
        _at_least("--samples", self.samples, 1)
        if self.limit is not None:
            _at_least("--limit", self.limit, 1)


@dataclass(frozen=True)
class StrategySettings:
    """The specs of the run's plug-ins and the thresholds they prune at."""

    scorer: str | None = None
    policy: str = field(default="percentile", metadata=_identity("policy"))
    mode: str = "text"
    engine: str = "hf"
    segmenter: str = field(default="paragraph", metadata=_identity("segmenter"))
    min_step_chars: int = field(
        default=DEFAULT_MIN_STEP_CHARS, metadata=_identity("min_step_chars")
    )
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    control: bool = True
    answer_max_tokens: int = field(default=512, metadata=_identity("answer_max_tokens"))

    def __post_init__(self) -> None:
        check_types(self)
        _at_least("--answer-max-tokens", self.answer_max_tokens, 1)
        if not self.thresholds:
            raise ValueError("--thresholds: give at least one threshold")
        for t in self.thresholds:
            if not 0.0 <= t < 1.0:
                raise ValueError(f"--thresholds: {t} is outside [0, 1)")
        # Sorted, without duplicates, rounded like threshold keys (0.1 * 3 is 0.3).
        rounded = tuple(sorted({round(float(t), 6) for t in self.thresholds}))
        distinct = sorted(set(map(float, self.thresholds)))
        if len(rounded) != len(distinct):
            close = next(
                (a, b) for a, b in itertools.pairwise(distinct) if round(a, 6) == round(b, 6)
            )
            raise ValueError(
                f"--thresholds: {close[0]!r} and {close[1]!r} are the same to 6 decimals"
            )
        object.__setattr__(self, "thresholds", rounded)
        Segmenter(self.segmenter, self.min_step_chars)  # validates


@dataclass(frozen=True)
class Placement:
    """Where the work runs; not part of a folder's identity (the records are the same)."""

    workers: int = 1
    ray_address: str | None = None

    def __post_init__(self) -> None:
        check_types(self)
        _at_least("--workers", self.workers, 1)
        if self.uses_ray and not importlib.util.find_spec("ray"):
            raise ValueError(
                "--workers and --ray-address need Ray: pip install 'stepprune[ray]' (or make ray)"
            )

    @property
    def uses_ray(self) -> bool:
        return self.workers > 1 or bool(self.ray_address)


@dataclass(frozen=True)
class RunPlan:
    """The strategies of a run, built once from its specs and shared by driver and workers."""

    scorer: Scorer
    policy: PruningPolicy
    mode: Mode
    engine: EngineConfig
    segmenter: Segmenter
    thresholds: tuple[float, ...]
    #: The random control's spec (None: ``--no-control``, or a mode that decides online).
    control: str | None
    seed: int
    sampling: SamplingConfig
    answer_max_tokens: int


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run, in parts; validated on construction."""

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    strategies: StrategySettings = field(default_factory=StrategySettings)
    placement: Placement = field(default_factory=Placement)
    seed: int = field(default=0, metadata=_identity("seed"))
    grade_timeout: float = 10.0
    out: str | None = None

    def __post_init__(self) -> None:
        check_types(self)
        check_types(self.sampling)  # decoding's part: its types too
        if not self.grade_timeout > 0:
            raise ValueError(f"grade timeout must be > 0 s, got {self.grade_timeout}")

    @classmethod
    def from_flat(cls, **settings: Any) -> RunConfig:
        """A config from the flat setting names of the CLI and ``config.json`` (``model``,
        ``samples``, ``mode``, ...); the kv and online options and the vLLM options of 0.2
        (``positions``, ``interval``, ``budget``, ``tensor_parallel_size``,
        ``gpu_memory_utilization``) are folded into the mode and engine specs."""
        settings = dict(settings)
        mode = _with_options(
            MODES,
            settings.pop("mode", "text"),
            {k: settings.pop(k) for k in ("positions", "interval", "budget") if k in settings},
            MODE_ALIASES,
        )
        engine = _with_options(
            ENGINES,
            settings.pop("engine", "hf"),
            {
                k: settings.pop(k)
                for k in ("tensor_parallel_size", "gpu_memory_utilization")
                if k in settings
            },
            ENGINE_ALIASES,
        )
        parts: dict[str, Any] = {}
        for name, part in (
            ("model", ModelSettings),
            ("data", DataSettings),
            ("sampling", SamplingConfig),
            ("strategies", StrategySettings),
            ("placement", Placement),
        ):
            names = {f.name for f in dataclasses.fields(part)}
            if part is ModelSettings and "model" in settings:
                settings["name"] = settings.pop("model")
            if part is StrategySettings:
                settings.update(mode=mode, engine=engine)
                if "thresholds" in settings:
                    settings["thresholds"] = tuple(settings["thresholds"])
            parts[name] = part(**{k: settings.pop(k) for k in list(settings) if k in names})
        unknown = set(settings) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown run settings: {', '.join(sorted(unknown))}")
        return cls(**parts, **settings)

    def plan(self) -> RunPlan:
        """Build the strategies the specs name (SpecError naming the option on a bad spec),
        and check that they fit together, before anything is loaded or written."""
        s = self.strategies
        mode = _build(MODES, "--mode", s.mode, answer_max_tokens=s.answer_max_tokens,
                      sampling=self.sampling, seed=self.seed)  # fmt: skip
        default = DEFAULT_ONLINE_SCORER if mode.decides_online else DEFAULT_SCORER
        scorer = _build(SCORERS, "--scorer", s.scorer or default)
        mode.check(scorer)
        engine = _build(ENGINES, "--engine", s.engine)
        if mode.decides_online and engine.location == "driver":
            # Online mode prunes the cache while it decodes, on transformers: the engine would
            # start unused and label the records with its name.
            raise ValueError(
                f"--engine {engine.name} cannot decode --mode {mode.name} "
                "(it prunes the cache while decoding, on transformers); use --engine hf"
            )
        controlled = s.control and not mode.decides_online
        return RunPlan(
            scorer=scorer,
            policy=_build(POLICIES, "--policy", s.policy),
            mode=mode,
            engine=engine,
            segmenter=Segmenter(s.segmenter, s.min_step_chars),
            thresholds=s.thresholds,
            control=control_spec(self.seed, scorer.spec) if controlled else None,
            seed=self.seed,
            sampling=self.sampling,
            answer_max_tokens=s.answer_max_tokens,
        )

    def output_dir(self) -> Path:
        """``--out``, or ``runs/<dataset>-<model>`` named from the config."""
        if self.out:
            return Path(self.out)
        model = Path(self.model.name.rstrip("/")).name.removesuffix(".gguf")
        return Path("runs") / f"{dataset_name(self.data.dataset)}-{model}"

    def identity(self) -> dict[str, Any]:
        """Settings that must match to resume in an existing run folder: the fields marked
        ``IDENTITY``, the dataset by name (its content is checked per problem against the
        folder's traces and records), and the mode with its options.

        Not the scorer, thresholds, samples or limit: traces are reused across those.
        """
        found: dict[str, Any] = {"dataset": dataset_name(self.data.dataset)}
        for part in (self, self.model, self.sampling, self.strategies):
            for f in dataclasses.fields(part):
                if IDENTITY in f.metadata:
                    found[f.metadata[IDENTITY]] = getattr(part, f.name)
        mode = MODES.build(self.strategies.mode)
        found["mode"] = mode.name
        found.update(LEGACY_MODE_OPTIONS)
        # An option added since keeps the identity of older folders while it has its default.
        found.update(
            {
                f.name: getattr(mode, f.name)
                for f in mode.spec_fields()
                if f.name in LEGACY_MODE_OPTIONS or getattr(mode, f.name) != f.default
            }
        )
        return found

    def to_json(self) -> dict[str, Any]:
        """The settings flat, as ``config.json`` holds them (``from_flat`` reads them back)."""
        flat: dict[str, Any] = {}
        for part in (self.model, self.data, self.sampling, self.strategies, self.placement):
            flat.update(dataclasses.asdict(part))
        flat["model"] = flat.pop("name")
        flat["thresholds"] = list(self.strategies.thresholds)
        # Readers of 0.2 folders take "mode" and "engine" as names, "scorer" as a spec.
        mode, _ = parse_spec(self.strategies.mode)
        flat.update(mode=mode, mode_spec=self.strategies.mode)
        flat.update(
            engine=parse_spec(self.strategies.engine)[0], engine_spec=self.strategies.engine
        )
        online = MODES.get(mode).decides_online
        flat["scorer"] = self.strategies.scorer or (
            DEFAULT_ONLINE_SCORER if online else DEFAULT_SCORER
        )
        flat.update(seed=self.seed, grade_timeout=self.grade_timeout, out=self.out)
        return flat


# The 0.2 flags that are now options of a mode's or an engine's spec.
MODE_ALIASES = {"positions": "positions", "interval": "interval", "budget": "budget"}
ENGINE_ALIASES = {"tensor_parallel_size": "tp", "gpu_memory_utilization": "gpu_memory"}
# The flag values that mean "not given" (the 0.2 defaults).
_NOT_GIVEN: dict[str, Any] = {**LEGACY_MODE_OPTIONS, "tensor_parallel_size": 1}


def _build(registry: Registry, option: str, spec: str, **context: Any) -> Any:
    try:
        return registry.build(spec, **context)
    except SpecError as error:
        raise SpecError(f"{option}: {error}") from None


def _with_options(
    registry: Registry, spec: str, flags: dict[str, Any], aliases: dict[str, str]
) -> str:
    """``spec`` with the 0.2 flags that were given appended as its options. A flag that the
    named plug-in does not take, or that the spec sets too, is refused naming the flag."""
    given = {k: v for k, v in flags.items() if v is not None and v != _NOT_GIVEN.get(k)}
    if not given:
        return spec
    name, options = parse_spec(spec)
    cls = _build(registry, f"--{registry.kind}", name).__class__
    keys = {f.metadata.get("spec_key", f.name) for f in cls.spec_fields()}
    extra = []
    for flag, value in given.items():
        key, option = aliases[flag], f"--{flag.replace('_', '-')}"
        owners = [n for n in registry.names if _has_option(registry.get(n), key)]
        if key not in keys:
            raise ValueError(
                f"{option} applies to --{registry.kind} {' or '.join(owners)} only, not "
                f"--{registry.kind} {name}"
            )
        if key in options:
            raise ValueError(f"{option} and --{registry.kind} {spec!r} both set {key}")
        extra.append(f"{key}={value}")
    combined = spec + ("," if options else ":") + ",".join(extra)
    try:
        registry.build(combined)
    except SpecError as error:
        flags_given = ", ".join(f"--{f.replace('_', '-')} {v}" for f, v in given.items())
        raise SpecError(f"{flags_given}: {error}") from None
    return combined


def _has_option(cls: type, key: str) -> bool:
    return any(f.metadata.get("spec_key", f.name) == key for f in cls.spec_fields())
