"""Actor-critic networks: MLP, MinAtar CNN, Nature CNN; Categorical or diagonal-Gaussian head.

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

Continuous (``Box``) actions: the policy head ``pi`` gives the Gaussian mean (B, A) and a
state-independent parameter ``log_std`` (A,) the standard deviation (openai/baselines
``baselines/acktr/policies.py`` ``GaussianMlpPolicy``; SB3 ``DiagGaussianDistribution``); it lives
on the actor (``actor.log_std``) with a separate critic, else on the net (``log_std``).
``policy.critic_activation`` lets a separate critic use another activation (baselines'
continuous ACKTR: tanh policy, ELU value network, ``acktr/value_functions.py``).

The CNNs use ReLU and their fixed widths as in the references; ``hidden``/``activation`` only
shape the MLP. ``policy.init = "normc"`` is baselines' continuous-control initialisation
(:data:`NORMC_GAINS`). The default initialisation follows openai/baselines ``a2c/utils.py`` ``ortho_init`` as used in
``common/policies.py``/``models.py``: orthogonal weights with gain √2 in the trunk, 0.01 for the
policy head and 1.0 for the value head; biases zero. (torch's ``orthogonal_`` flattens a conv
kernel to (out, in·kh·kw), the transpose of baselines' (kh·kw·in, out) — the same family of
semi-orthogonal matrices.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kfac_bench.config import ConfigError, PolicyConfig, RunConfig
from kfac_bench.rl.distributions import ActionDistribution, Categorical, DiagGaussian

TRUNK_GAIN = math.sqrt(2.0)
POLICY_GAIN = 0.01
VALUE_GAIN = 1.0

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


def separate_critic_for(config: RunConfig) -> bool:
    """Whether ``config`` asks for separate actor and critic networks."""
    return config.optim.critic != "shared" or not config.policy.shared_trunk


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


def _trunk(
    obs_shape: tuple[int, ...], arch: str, config: PolicyConfig, activation: str | None = None
) -> nn.Sequential:
    """The feature extractor without heads: (B, *obs_shape) -> (B, features)."""
    if arch == "mlp":
        act = _ACTIVATIONS[activation or config.activation]
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


#: ``policy.init = "normc"``: openai/baselines ``common/tf_util.py`` ``normc_initializer`` with the
#: gains of ``acktr/policies.py`` and ``acktr/value_functions.py`` (hidden 1.0, Gaussian mean 0.1,
#: value 1.0).
NORMC_GAINS = {"trunk": 1.0, "pi": 0.1, "v": 1.0}
ORTHOGONAL_GAINS = {"trunk": TRUNK_GAIN, "pi": POLICY_GAIN, "v": VALUE_GAIN}


def normc_(weight: torch.Tensor, gain: float) -> None:
    """Gaussian weights rescaled so that each output unit's incoming weights have norm ``gain``
    (baselines' ``normc_initializer``: its columns are torch's rows, weight (out, in))."""
    with torch.no_grad():
        weight.normal_()
        flat = weight.view(weight.shape[0], -1)
        flat.mul_(gain / flat.pow(2).sum(1, keepdim=True).sqrt())


def _init(layer: nn.Module, gain: float, scheme: str = "orthogonal") -> None:
    if scheme == "normc":
        normc_(layer.weight, gain)
    else:
        nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)


class _Actor(nn.Module):
    """Separate-critic mode: feature trunk + policy head (+ Gaussian log σ): what K-FAC steps."""

    def __init__(self, trunk: nn.Sequential, pi: nn.Linear, log_std: nn.Parameter | None) -> None:
        super().__init__()
        self.trunk = trunk
        self.pi = pi
        self.log_std = log_std

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
    """The policy head and a state value from one observation batch.

    ``forward(obs)``: obs (B, *obs_shape), float32 or uint8 (uint8 is divided by 255 here) →
    (head (B, A), value (B,)); head is the Categorical logits, or the Gaussian mean when
    ``continuous`` (A = action dimensions). :meth:`distribution` turns a head into the action
    distribution.
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        num_actions: int,
        config: PolicyConfig,
        *,
        separate_critic: bool = False,
        continuous: bool = False,
    ) -> None:
        super().__init__()
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.num_actions = int(num_actions)
        self.arch = resolve_arch(self.obs_shape, config)
        self.separate_critic = separate_critic
        self.continuous = continuous
        log_std = (
            nn.Parameter(torch.full((self.num_actions,), float(config.log_std_init)))
            if continuous
            else None
        )

        gains = NORMC_GAINS if config.init == "normc" else ORTHOGONAL_GAINS

        def trunk(activation: str | None = None) -> nn.Sequential:
            body = _trunk(self.obs_shape, self.arch, config, activation)
            for m in body:
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    _init(m, gains["trunk"], config.init)
            return body

        def head(width: int, out: int, role: str) -> nn.Linear:
            layer = nn.Linear(width, out)
            _init(layer, gains[role], config.init)
            return layer

        if separate_critic:
            critic_activation = (
                None if config.critic_activation == "same" else config.critic_activation
            )
            actor_trunk, critic_trunk = trunk(), trunk(critic_activation)
            feat = _feature_size(actor_trunk, self.obs_shape)
            self.actor = _Actor(actor_trunk, head(feat, self.num_actions, "pi"), log_std)
            self.critic = _Critic(critic_trunk, head(feat, 1, "v"))
        else:
            self.trunk = trunk()
            feat = _feature_size(self.trunk, self.obs_shape)
            self.pi = head(feat, self.num_actions, "pi")
            self.v = head(feat, 1, "v")
            self.log_std = log_std

    @property
    def log_std_parameter(self) -> nn.Parameter | None:
        """The Gaussian's log σ (A,), or None for a Categorical policy."""
        return self.actor.log_std if self.separate_critic else self.log_std

    def distribution(self, head: torch.Tensor) -> ActionDistribution:
        """The action distribution of a head from :meth:`forward` (B, A)."""
        if self.continuous:
            return DiagGaussian(head, self.log_std_parameter)
        return Categorical(head)

    def _prepare(self, obs: torch.Tensor) -> torch.Tensor:
        dtype = (self.actor.pi if self.separate_critic else self.pi).weight.dtype
        if obs.dtype == torch.uint8:
            return obs.to(dtype).div_(255.0)  # one float copy of the frames, not two
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
        """Parameters the policy depends on (shared trunk + policy head (+ log σ), or the actor)."""
        if self.separate_critic:
            return list(self.actor.parameters())
        extra = [] if self.log_std is None else [self.log_std]
        return [*self.trunk.parameters(), *self.pi.parameters(), *extra]

    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters of the separate critic (``[]`` when the trunk is shared)."""
        return list(self.critic.parameters()) if self.separate_critic else []


def build_policy(
    obs_shape: tuple[int, ...],
    num_actions: int,
    config: PolicyConfig,
    *,
    separate_critic: bool = False,
    continuous: bool = False,
) -> ActorCritic:
    """An :class:`ActorCritic` for ``obs_shape`` and ``num_actions`` (architecture resolved);
    ``continuous``: a diagonal Gaussian over ``num_actions`` action dimensions."""
    return ActorCritic(
        obs_shape, num_actions, config, separate_critic=separate_critic, continuous=continuous
    )
