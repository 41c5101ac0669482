"""Nested frozen run configuration, dotted-key overrides with type checking, and its JSON form.

One :class:`RunConfig` fully describes a run. It is built in layers (see :func:`build_config`):

    dataclass defaults  ->  family base (``presets.FAMILY_BASE``)  ->  preset table  ->  overrides

Every leaf is addressable by a dotted key (``kfac.damping``, ``rollout.n_envs``, ``total_steps``),
which is what ``--set key=value`` and sweep specs use. Values are checked against the field's type
annotation; ``Literal`` fields list their valid choices in the error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """A bad configuration key or value. The message is one line meant for the user."""


DampingMode = Literal["eigen", "tikhonov", "tikhonov-pi"]
TrustRegion = Literal["baselines", "acktr-paper", "notebook", "none"]
RunningInit = Literal["variant", "first", "identity", "zeros-average"]


@dataclass(frozen=True)
class RolloutConfig:
    """On-policy batch: ``n_envs × n_steps`` transitions per update."""

    n_envs: int = 8
    n_steps: int = 16
    gamma: float = 0.99
    gae_lambda: float | None = None  # None: n-step bootstrapped returns (A2C/ACKTR); else GAE(λ)
    normalize_advantages: bool = False


@dataclass(frozen=True)
class LossConfig:
    """Training loss ``pg + vf_coef·value − ent_coef·H`` and the Fisher pass's value term."""

    ent_coef: float = 0.01
    vf_coef: float = 0.5
    vf_fisher_coef: float = 1.0
    value_loss: Literal["mse", "half-mse"] = "mse"  # mean((v−R)²) (baselines HEAD) or ½ of it


Algo = Literal["acktr", "a2c", "ppo"]
FirstOrderOptimizer = Literal["rmsprop-tf", "rmsprop-torch", "adam"]


@dataclass(frozen=True)
class OptimConfig:
    """The update rule: ``acktr`` (K-FAC step) or a first-order control, ``a2c`` / ``ppo``."""

    algo: Algo = "acktr"
    lr: float = 0.25
    lr_schedule: Literal["constant", "linear"] = "linear"
    max_grad_norm: float | None = 0.5  # a2c/ppo: every step; acktr: cold-start steps only
    # a2c/ppo only. rmsprop-tf: TF1 semantics (ε inside the root, square average starts at 1) as
    # openai/baselines A2C; rmsprop-torch: torch.optim.RMSprop (SB3's A2C default); adam: PPO.
    first_order: FirstOrderOptimizer = "rmsprop-tf"
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 1e-5
    adam_eps: float = 1e-5  # SB3 ActorCriticPolicy and CleanRL ppo.py both use 1e-5
    critic: Literal["shared", "separate-adam"] = "shared"  # separate-adam: the seed notebook
    critic_lr: float = 1e-3
    critic_steps: int = 1  # separate-adam: full-batch Adam steps on the value loss per update


@dataclass(frozen=True)
class PpoConfig:
    """PPO-clip epochs over one batch (``optim.algo = "ppo"``; SB3 ``PPO``, CleanRL ``ppo.py``)."""

    n_epochs: int = 10
    minibatch_size: int = 64  # transitions per minibatch (SB3 ``batch_size``)
    clip_range: float = 0.2
    clip_range_schedule: Literal["constant", "linear"] = "constant"  # linear: with the lr factor
    clip_value: float | None = None  # clip the value change (CleanRL clip_vloss), None: off
    target_kl: float | None = None  # stop the epochs once approx KL exceeds 1.5·target (SB3)


@dataclass(frozen=True)
class KfacConfig:
    """Curvature estimate, damping/inverse and the trust-region step (DESIGN.md §2–3)."""

    damping: float = 0.01  # λ, added to d_G d_Aᵀ (eigen) or split per factor (tikhonov*)
    damping_mode: DampingMode = "eigen"
    factor_damping: float | None = None  # γ for `tikhonov`; None: √λ
    eigen_clip: float = 1e-6  # τ: eigenvalues ≤ τ are zeroed per factor (eigen mode)
    stats_decay: float = 0.99
    stats_every: int = 1  # Fisher pass every k updates
    inverse_every: int = 10  # decompositions recomputed every k updates
    running_init: RunningInit = "variant"  # "variant": the variant's own rule
    init_average_steps: int = 10  # k for "zeros-average" (baselines: plain average of first 10)
    dtype: Literal["float32", "float64"] = "float32"  # factors and their decompositions
    kl_clip: float = 0.001  # δ
    trust_region: TrustRegion = "baselines"
    # "linear": δ decays with the lr schedule's factor. While the clip binds, lr·ν = sqrt(δ/q) does
    # not depend on lr, so a linear lr decay alone does not shrink K-FAC steps (REFERENCES §3.4).
    kl_clip_schedule: Literal["constant", "linear"] = "constant"
    max_nu: float = 1.0
    momentum: float = 0.9
    momentum_scale: Literal["1-mu", "1"] = "1-mu"  # θ −= lr·(1−μ)·buf (BL/IK/AK) or lr·buf (KP)
    cold_iters: int = 0  # clipped momentum-SGD updates before K-FAC steps (baselines: 10)
    cold_momentum: float = 0.9
    stats_batch_fraction: float = 1.0  # fast knob: statistics on a subsample of the batch
    # Speed knobs (issue 6; kfac_bench/bench_report.py FAST). Off by default: the synchronous
    # inverse of the references. async: decompositions run on a background thread from a snapshot
    # of the factors and are used exactly `async_staleness` updates later (waiting if needed), so
    # runs stay reproducible and the staleness is exact (openai/baselines ran it unbounded).
    async_inverse: bool = False
    async_staleness: int = 5  # updates between a decomposition's snapshot and its first use
    async_timeout_s: float = 600.0  # waiting longer than this for a decomposition: KfacError
    inverse_threads: int = 0  # torch threads for the decompositions (0: torch's default)
    unsupported: Literal["error", "sgd"] = "error"  # parameters outside Linear/Conv2d


@dataclass(frozen=True)
class PolicyConfig:
    """Network: ``auto`` picks MLP / MinAtar CNN / Nature CNN from the observation shape."""

    arch: Literal["auto", "mlp", "minatar-cnn", "nature-cnn"] = "auto"
    hidden: tuple[int, ...] = (64, 64)
    activation: Literal["tanh", "relu"] = "tanh"
    shared_trunk: bool = True  # False: separate actor and critic networks (stable-baselines MLP)


@dataclass(frozen=True)
class AtariConfig:
    """Atari protocol (ale-py ``AtariVectorEnv``); training-only wrappers are flagged as such."""

    episodic_life: bool = True
    reward_clip: bool = True
    noop_max: int = 30
    frame_skip: int = 4
    repeat_action_probability: float = 0.0


@dataclass(frozen=True)
class LogConfig:
    """How often the trainer writes ``updates.csv`` rows and checkpoints."""

    update_every: int = 10  # updates between updates.csv rows
    checkpoint_every: int = 200  # updates between checkpoints (and one at the end)
    diagnostics: bool = True  # factor traces / condition numbers in updates.csv


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs. ``env`` is a Gymnasium id."""

    env: str
    variant: str = "paper"
    seed: int = 0
    preset: str = ""
    total_steps: int = 100_000
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    torch_threads: int = 0  # 0: leave torch's default
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ppo: PpoConfig = field(default_factory=PpoConfig)
    kfac: KfacConfig = field(default_factory=KfacConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    atari: AtariConfig = field(default_factory=AtariConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def label(self) -> str:
        """What tables and figures call this run: the variant, or the control's algo name."""
        return self.variant if self.optim.algo == "acktr" else self.optim.algo


# ---------------------------------------------------------------------------------------------
# Dotted keys


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def leaf_keys(cls: type = RunConfig, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf key of a config class, mapped to its type annotation."""
    keys: dict[str, Any] = {}
    for name, tp in _hints(cls).items():
        if _is_dataclass_type(tp):
            keys.update(leaf_keys(tp, f"{prefix}{name}."))
        else:
            keys[f"{prefix}{name}"] = tp
    return keys


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return "list of int"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp`` (typed values from TOML/JSON). Raise ConfigError."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} has the wrong type (expected {_type_name(tp)})")
    if origin is tuple:
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return tuple(value)
        raise ConfigError(f"{key}: {value!r} has the wrong type (expected a list of int)")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: {value!r} has the wrong type (expected {_type_name(tp)})")


def parse_cli_value(text: str) -> Any:
    """Turn a ``--set`` string into a typed value: JSON literal if it parses, else the string."""
    lowered = text.strip()
    if lowered in ("none", "None", "null"):
        return None
    if lowered in ("true", "True"):
        return True
    if lowered in ("false", "False"):
        return False
    try:
        return json.loads(lowered)
    except json.JSONDecodeError:
        return text


def check_key(key: str) -> Any:
    """Return the annotation of a dotted key; unknown keys raise ConfigError with close matches."""
    keys = leaf_keys()
    if key in keys:
        return keys[key]
    import difflib

    close = difflib.get_close_matches(key, list(keys), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown config key {key!r}{hint}; see `kfac-bench presets --keys`")


def with_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a copy with dotted-key overrides applied (typed values; checked)."""
    for key, value in overrides.items():
        tp = check_key(key)
        config = _replace_path(config, key.split("."), coerce(key, value, tp))
    return config


def check_consistency(config: RunConfig) -> RunConfig:
    """Constraints between keys that types cannot express. Raises ConfigError; returns config."""
    optim = config.optim
    if optim.critic_steps < 1:
        raise ConfigError(f"optim.critic_steps: {optim.critic_steps} must be at least 1")
    if optim.critic_steps > 1 and (optim.algo != "acktr" or optim.critic != "separate-adam"):
        raise ConfigError(
            "optim.critic_steps > 1 needs optim.algo='acktr' and optim.critic='separate-adam'"
        )
    return config


def _replace_path(obj: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    if not rest:
        return dataclasses.replace(obj, **{head: value})
    return dataclasses.replace(obj, **{head: _replace_path(getattr(obj, head), rest, value)})


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Nested plain dict (tuples become lists), for config.json."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def from_dict(tree: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from :func:`to_dict` output (unknown keys rejected)."""
    flat = flatten(tree)
    known = leaf_keys()
    config = RunConfig(env=str(flat.pop("env")))
    return with_overrides(config, {k: v for k, v in flat.items() if k in known or check_key(k)})


def get_value(config: RunConfig, key: str) -> Any:
    obj: Any = config
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


# Settings that do not change what a run computes, so a resumed run may differ in them.
RESUME_INDEPENDENT = frozenset({"torch_threads"})


def config_differences(saved: dict[str, Any], config: RunConfig) -> list[str]:
    """``key: saved -> wanted`` for every setting where a run directory's config.json differs.

    Keys missing from ``saved`` (fields added to the code since the run started) count as their
    dataclass default, which by convention keeps the old behaviour.
    """
    defaults = flatten(to_dict(RunConfig(env=config.env)))
    old, new = flatten(saved), flatten(to_dict(config))
    missing = "(missing)"
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key in RESUME_INDEPENDENT:
            continue
        before = old.get(key, defaults.get(key, missing))
        after = new.get(key, missing)
        if before != after:
            diffs.append(f"{key}: {before!r} -> {after!r}")
    return diffs
