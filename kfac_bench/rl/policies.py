"""Actor-critic networks for discrete actions: MLP, MinAtar CNN, Nature CNN.

Only ``nn.Linear`` and ``nn.Conv2d`` carry parameters (activations and ``nn.Flatten`` are
parameter-free), so K-FAC can precondition every parameter. Module names are stable because
they appear in logs:

* shared trunk (default): ``trunk.<i>``, policy head ``pi``, value head ``v``;
* separate critic (the seed notebook's actor + Adam critic): ``actor.trunk.<i>``, ``actor.pi``,
  ``critic.trunk.<i>``, ``critic.v``; :meth:`ActorCritic.kfac_module` is then ``actor``.

Architectures:

* ``mlp`` — ``hidden`` sizes (64-64) with ``activation`` (tanh); non-flat inputs are flattened.
* ``minatar-cnn`` — Young & Tian (2019), MinAtar baselines: conv 16 3×3 stride 1, no padding →
  ReLU → flatten (16·8·8 = 1024 for 10×10) → fc 128 → ReLU.
* ``nature-cnn`` — Mnih et al. (2015); openai/baselines ``common/models.py`` ``nature_cnn``:
  uint8 (4, 84, 84) / 255 → conv 32 8×8/4 → ReLU → conv 64 4×4/2 → ReLU → conv 64 3×3/1 →
  ReLU → flatten 3136 → fc 512 → ReLU.

The CNNs use ReLU and their fixed widths as in the references; ``hidden``/``activation`` only
shape the MLP. Initialisation follows openai/baselines ``a2c/utils.py`` ``ortho_init`` as used in
``common/policies.py``/``models.py``: orthogonal weights with gain √2 in the trunk, 0.01 for the
policy head and 1.0 for the value head; biases zero. (torch's ``orthogonal_`` flattens a conv
kernel to (out, in·kh·kw), the transpose of baselines' (kh·kw·in, out) — the same family of
semi-orthogonal matrices.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kfac_bench.config import ConfigError, PolicyConfig

TRUNK_GAIN = math.sqrt(2.0)
POLICY_GAIN = 0.01
VALUE_GAIN = 1.0

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def resolve_arch(obs_shape: tuple[int, ...], config: PolicyConfig) -> str:
    """The architecture for ``obs_shape``: ``auto`` picks by shape; explicit choices are checked.

    ``auto``: 1-D → ``mlp``; (C, 10, 10) → ``minatar-cnn``; (C, H, W) with H, W ≥ 36 →
    ``nature-cnn`` (the smallest input its three convolutions accept). Raises ConfigError.
    """
    shape = tuple(int(d) for d in obs_shape)
    arch = config.arch
    if arch == "auto":
        if len(shape) == 1:
            return "mlp"
        if len(shape) == 3 and shape[1:] == (10, 10):
            return "minatar-cnn"
        if len(shape) == 3 and min(shape[1:]) >= 36:
            return "nature-cnn"
        raise ConfigError(
            f"policy.arch: no automatic network for observations of shape {shape}; "
            "set policy.arch to mlp, minatar-cnn or nature-cnn"
        )
    if arch == "minatar-cnn" and not (len(shape) == 3 and min(shape[1:]) >= 3):
        raise ConfigError(f"policy.arch: minatar-cnn needs (C, H, W) observations, got {shape}")
    if arch == "nature-cnn" and not (len(shape) == 3 and min(shape[1:]) >= 36):
        raise ConfigError(
            f"policy.arch: nature-cnn needs (C, H, W) observations with H, W >= 36, got {shape}"
        )
    return arch


def _trunk(obs_shape: tuple[int, ...], arch: str, config: PolicyConfig) -> nn.Sequential:
    """The feature extractor without heads: (B, *obs_shape) -> (B, features)."""
    if arch == "mlp":
        act = _ACTIVATIONS[config.activation]
        layers: list[nn.Module] = [] if len(obs_shape) == 1 else [nn.Flatten()]
        width = math.prod(obs_shape)
        for h in config.hidden:
            layers += [nn.Linear(width, h), act()]
            width = h
        return nn.Sequential(*layers)
    channels = obs_shape[0]
    if arch == "minatar-cnn":
        convs: list[nn.Module] = [nn.Conv2d(channels, 16, 3, stride=1), nn.ReLU()]
        fc = 128
    elif arch == "nature-cnn":
        convs = [
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
        ]
        fc = 512
    else:  # pragma: no cover - PolicyConfig.arch is a Literal checked by config
        raise ConfigError(f"policy.arch: unknown architecture {arch!r}")
    with torch.no_grad():
        flat = nn.Sequential(*convs)(torch.zeros(1, *obs_shape)).numel()
    return nn.Sequential(*convs, nn.Flatten(), nn.Linear(flat, fc), nn.ReLU())


def _feature_size(trunk: nn.Sequential, obs_shape: tuple[int, ...]) -> int:
    linears = [m for m in trunk if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else math.prod(obs_shape)


def _init(layer: nn.Module, gain: float) -> None:
    nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)


class _Actor(nn.Module):
    """Separate-critic mode: feature trunk + policy head (what K-FAC preconditions)."""

    def __init__(self, trunk: nn.Sequential, pi: nn.Linear) -> None:
        super().__init__()
        self.trunk = trunk
        self.pi = pi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pi(self.trunk(x))


class _Critic(nn.Module):
    """Separate-critic mode: its own trunk + value head."""

    def __init__(self, trunk: nn.Sequential, v: nn.Linear) -> None:
        super().__init__()
        self.trunk = trunk
        self.v = v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.trunk(x)).squeeze(-1)


class ActorCritic(nn.Module):
    """Categorical policy logits and a state value from one observation batch.

    ``forward(obs)``: obs (B, *obs_shape), float32 or uint8 (uint8 is divided by 255 here) →
    (logits (B, A), value (B,)).
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        num_actions: int,
        config: PolicyConfig,
        *,
        separate_critic: bool = False,
    ) -> None:
        super().__init__()
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.num_actions = int(num_actions)
        self.arch = resolve_arch(self.obs_shape, config)
        self.separate_critic = separate_critic

        def trunk() -> nn.Sequential:
            body = _trunk(self.obs_shape, self.arch, config)
            for m in body:
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    _init(m, TRUNK_GAIN)
            return body

        def head(width: int, out: int, gain: float) -> nn.Linear:
            layer = nn.Linear(width, out)
            _init(layer, gain)
            return layer

        if separate_critic:
            actor_trunk, critic_trunk = trunk(), trunk()
            feat = _feature_size(actor_trunk, self.obs_shape)
            self.actor = _Actor(actor_trunk, head(feat, self.num_actions, POLICY_GAIN))
            self.critic = _Critic(critic_trunk, head(feat, 1, VALUE_GAIN))
        else:
            self.trunk = trunk()
            feat = _feature_size(self.trunk, self.obs_shape)
            self.pi = head(feat, self.num_actions, POLICY_GAIN)
            self.v = head(feat, 1, VALUE_GAIN)

    def _prepare(self, obs: torch.Tensor) -> torch.Tensor:
        dtype = (self.actor.pi if self.separate_critic else self.pi).weight.dtype
        if obs.dtype == torch.uint8:
            return obs.to(dtype) / 255.0
        return obs.to(dtype)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._prepare(obs)
        if self.separate_critic:
            return self.actor(x), self.critic(x)
        features = self.trunk(x)
        return self.pi(features), self.v(features).squeeze(-1)

    def critic_value(self, obs: torch.Tensor) -> torch.Tensor:
        """Separate-critic mode only: value (B,) without running the actor."""
        return self.critic(self._prepare(obs))

    def kfac_module(self) -> nn.Module:
        """What K-FAC preconditions: the whole net when shared, only the actor otherwise."""
        return self.actor if self.separate_critic else self

    def actor_parameters(self) -> list[nn.Parameter]:
        """Parameters the logits depend on (shared trunk + policy head, or the actor)."""
        if self.separate_critic:
            return list(self.actor.parameters())
        return [*self.trunk.parameters(), *self.pi.parameters()]

    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters of the separate critic (``[]`` when the trunk is shared)."""
        return list(self.critic.parameters()) if self.separate_critic else []


def build_policy(
    obs_shape: tuple[int, ...],
    num_actions: int,
    config: PolicyConfig,
    *,
    separate_critic: bool = False,
) -> ActorCritic:
    """An :class:`ActorCritic` for ``obs_shape`` and ``num_actions`` (architecture resolved)."""
    return ActorCritic(obs_shape, num_actions, config, separate_critic=separate_critic)
