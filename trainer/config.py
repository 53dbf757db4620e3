"""Training configs: typed dataclasses, every default stated once, loadable from YAML.

Overrides use `--key=value` with dotted keys for nested fields (`--method_config.cfg_dropout=0.2`);
values are parsed as YAML scalars. Unknown keys and wrong types are rejected with the allowed set.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is malformed."""


@dataclass
class ExportConfig:
    """How the finished model is written as a shipped checkpoint."""

    id: str = "my-model"
    output_dir: str | None = None  # default: <run_dir>/model
    dtype: str = "float16"  # weights on disk: float16 keeps small checkpoints small
    default_steps: int = 25
    default_guidance: float = 3.0
    scheduler_shift: float = 1.0  # the exported sampler's timestep shift (also used for training-time evals)
    description: str = ""


@dataclass
class TrainConfig:
    run_dir: str = "runs/run"
    method: str = "flow_matching"
    method_config: dict[str, Any] = field(default_factory=dict)  # validated by the method's own dataclass
    world: str = "shapes"
    category_weights: dict[str, float] | None = None  # world categories drawn in proportion; None = uniform
    model_preset: str = "dit-s"
    init_from: str | None = None  # an exported checkpoint directory to start the network from
    teacher: str | None = None  # distillation methods: the frozen teacher's checkpoint directory
    # a folder runs share their ODE pair sets through (trainer/ode_pairs.py): a run reuses a set another run made by
    # the same recipe from the same teacher weights, instead of spending the teacher's ODE on it again
    pair_cache: str | None = None
    text_encoder: str | None = None  # model dir or package; None = the packaged MiniLM
    max_tokens: int = 40
    seed: int = 0
    max_steps: int = 1000
    max_minutes: float | None = None  # stop (and save) after this much wall time
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.1
    # steps | time. "time" (needs max_minutes): the cosine also advances with the wall-clock budget, whichever is
    # further, so a run that its time budget stops early still ends at min_lr. Lent-GPU stages are sized in minutes
    # and the steps they reach depend on the card and on what shares it (session 17: a teacher stage stopped at 38 %
    # of its schedule, lr still 2.3e-4). Steps then depend on timing, so a resumed run is no longer step-exact.
    lr_clock: str = "steps"
    weight_decay: float = 0.0
    adam_beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: str = "no"  # no | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    # activation checkpointing in the trained networks (trainer/networks.py): less memory (0.27x), slower (0.79x)
    gradient_checkpointing: bool = False
    num_workers: int = 0  # data-loader processes making batches ahead of the GPU
    log_every: int = 10
    sample_every: int = 500
    eval_every: int = 1000
    eval_prompts: int = 64
    eval_steps: int | None = None  # None: the export's default_steps
    eval_guidance: float | None = None
    checkpoint_every: int = 500
    collapse_guard: bool = True  # students: stop when samples collapse (trainer/guard.py), keep the last good checkpoint
    guard_diversity_ratio: float = 0.35
    guard_judge_drop: float = 0.25
    keep_checkpoints: int = 2
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        checks = [
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (
                self.mixed_precision in ("no", "bf16", "fp16"),
                f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}",
            ),
            (self.lr_schedule in ("cosine", "constant"), f"lr_schedule must be cosine or constant, got {self.lr_schedule!r}"),
            (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0"),
            (self.lr_clock in ("steps", "time"), f"lr_clock must be steps or time, got {self.lr_clock!r}"),
            (
                self.lr_clock != "time" or bool(self.max_minutes),
                "lr_clock 'time' follows the max_minutes budget: set max_minutes too",
            ),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (min(self.log_every, self.sample_every, self.eval_every, self.checkpoint_every) >= 1, "*_every values must be >= 1"),
        ]
        if self.category_weights is not None:
            from trainer.worlds.shapes import CATEGORIES

            unknown = sorted(set(self.category_weights) - set(CATEGORIES))
            if unknown:
                raise ConfigError(f"category_weights: unknown categories {unknown}; known: {', '.join(CATEGORIES)}")
            weights = list(self.category_weights.values())
            if not all(isinstance(w, int | float) and not isinstance(w, bool) for w in weights):
                raise ConfigError(f"category_weights values must be numbers, got {self.category_weights}")
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ConfigError("category_weights must be >= 0 with a positive sum")
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def _check_type(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(name, value, option)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return build(hint, value, prefix=f"{name}.")
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, bool):  # YAML 1.1 reads a bare `no`/`yes` as a boolean
        return "yes" if value else "no"
    if hint in (int, float, str, bool):
        if isinstance(value, bool) and hint is not bool or not isinstance(value, hint):
            raise ConfigError(f"{name} must be {hint.__name__}, got {value!r}")
        return value
    return value


def build(cls: type, data: dict[str, Any], prefix: str = ""):
    """Instantiate dataclass `cls` from a plain mapping, checking keys and types."""
    hints = typing.get_type_hints(cls)
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    kwargs = {key: _check_type(prefix + key, value, hints[key]) for key, value in data.items()}
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['--a.b=1', '--c=x'] -> {'a': {'b': 1}, 'c': 'x'}."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if not item.startswith("--") or "=" not in item:
            raise ConfigError(f"override {item!r} must look like --key=value")
        key, raw = item[2:].split("=", 1)
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}  # safe_load: configs are data, never code
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys")
    data = _merge(data, parse_overrides(overrides or []))
    return build(TrainConfig, data)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
