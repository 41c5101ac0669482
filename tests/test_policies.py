"""Actor-critic networks: architecture choice, exact forward values, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kfac_bench.config import ConfigError, PolicyConfig
from kfac_bench.rl.policies import build_policy, resolve_arch

MLP = PolicyConfig()  # auto, 64-64 tanh


def _param_layers(module: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in module.named_modules() if list(m.parameters(recurse=False))}


def _assert_semi_orthogonal(weight: torch.Tensor, gain: float) -> None:
    """Rows (out ≤ fan_in) or columns (out > fan_in) orthonormal up to ``gain``."""
    w = weight.detach().reshape(weight.shape[0], -1).double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    torch.testing.assert_close(gram, gain**2 * eye, atol=1e-5 * gain**2, rtol=0)


@pytest.mark.parametrize(
    ("shape", "arch"),
    [((4,), "mlp"), ((6, 10, 10), "minatar-cnn"), ((4, 84, 84), "nature-cnn")],
)
def test_resolve_arch_auto(shape: tuple[int, ...], arch: str) -> None:
    assert resolve_arch(shape, PolicyConfig()) == arch


def test_resolve_arch_explicit_and_errors() -> None:
    assert resolve_arch((4, 10, 10), PolicyConfig(arch="mlp")) == "mlp"  # flattened
    with pytest.raises(ConfigError, match="nature-cnn"):
        resolve_arch((4,), PolicyConfig(arch="nature-cnn"))
    with pytest.raises(ConfigError, match="minatar-cnn"):
        resolve_arch((4,), PolicyConfig(arch="minatar-cnn"))
    with pytest.raises(ConfigError, match="no automatic network"):
        resolve_arch((10, 10), PolicyConfig())


def test_mlp_forward_matches_hand_computation() -> None:
    torch.manual_seed(0)
    net = build_policy((4,), 2, MLP)
    assert list(_param_layers(net)) == ["trunk.0", "trunk.2", "pi", "v"]
    obs = torch.randn(5, 4)
    logits, value = net(obs)
    w1, w2 = net.trunk[0], net.trunk[2]
    h = torch.tanh(torch.tanh(obs @ w1.weight.T + w1.bias) @ w2.weight.T + w2.bias)
    torch.testing.assert_close(logits, h @ net.pi.weight.T + net.pi.bias)
    torch.testing.assert_close(value, (h @ net.v.weight.T + net.v.bias)[:, 0])
    assert logits.shape == (5, 2) and value.shape == (5,)


def test_same_seed_same_network_and_outputs() -> None:
    obs = torch.rand(3, 6, 10, 10)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        net = build_policy((6, 10, 10), 3, PolicyConfig())
        outs.append(net(obs))
    for a, b in zip(outs[0], outs[1]):
        assert torch.equal(a, b)
    torch.manual_seed(8)
    other = build_policy((6, 10, 10), 3, PolicyConfig())
    assert not torch.equal(other(obs)[1], outs[0][1])


@pytest.mark.parametrize(
    ("shape", "config"),
    [((4,), MLP), ((4, 10, 10), PolicyConfig()), ((4, 84, 84), PolicyConfig())],
)
def test_orthogonal_init_and_gains(shape: tuple[int, ...], config: PolicyConfig) -> None:
    torch.manual_seed(1)
    net = build_policy(shape, 6, config)
    for name, layer in _param_layers(net).items():
        gain = {"pi": 0.01, "v": 1.0}.get(name, math.sqrt(2.0))
        _assert_semi_orthogonal(layer.weight, gain)
        assert torch.count_nonzero(layer.bias) == 0, name
    # Value head is one row: its norm is the gain; policy rows have norm 0.01.
    assert net.v.weight.norm().item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(net.pi.weight.norm(dim=1), torch.full((6,), 0.01))


def test_only_linear_and_conv_carry_parameters() -> None:
    for shape in [(4,), (4, 10, 10), (4, 84, 84)]:
        for separate in (False, True):
            net = build_policy(shape, 3, PolicyConfig(), separate_critic=separate)
            for name, layer in _param_layers(net).items():
                assert isinstance(layer, (nn.Linear, nn.Conv2d)), name


def test_minatar_cnn_layout() -> None:
    net = build_policy((4, 10, 10), 3, PolicyConfig())
    conv, fc = net.trunk[0], net.trunk[3]
    assert isinstance(conv, nn.Conv2d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        4,
        16,
        (3, 3),
        (1, 1),
        (0, 0),
    )
    assert (fc.in_features, fc.out_features) == (16 * 8 * 8, 128)
    assert net.pi.in_features == 128 and net.v.out_features == 1


def test_nature_cnn_layout_and_flatten_size() -> None:
    net = build_policy((4, 84, 84), 4, PolicyConfig())
    assert list(_param_layers(net)) == ["trunk.0", "trunk.2", "trunk.4", "trunk.7", "pi", "v"]
    convs = [net.trunk[i] for i in (0, 2, 4)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (32, 8, 4),
        (64, 4, 2),
        (64, 3, 1),
    ]
    assert net.trunk[7].in_features == 3136 and net.trunk[7].out_features == 512
    features = net.trunk[:6](torch.zeros(1, 4, 84, 84))
    assert features.shape == (1, 64, 7, 7)


def test_uint8_input_is_scaled_by_255() -> None:
    torch.manual_seed(2)
    net = build_policy((4, 84, 84), 4, PolicyConfig())
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    logits_u8, value_u8 = net(frames)
    logits_f, value_f = net(frames.float() / 255.0)
    torch.testing.assert_close(logits_u8, logits_f)
    torch.testing.assert_close(value_u8, value_f)


def test_float64_network_accepts_float32_obs() -> None:
    net = build_policy((4,), 2, MLP).double()
    logits, value = net(torch.randn(3, 4))
    assert logits.dtype == value.dtype == torch.float64


def test_separate_critic_split() -> None:
    torch.manual_seed(3)
    net = build_policy((4,), 2, MLP, separate_critic=True)
    names = list(_param_layers(net))
    assert names == [
        "actor.trunk.0",
        "actor.trunk.2",
        "actor.pi",
        "critic.trunk.0",
        "critic.trunk.2",
        "critic.v",
    ]
    actor = net.kfac_module()
    assert actor is net.actor
    actor_ids = {id(p) for p in actor.parameters()}
    critic_ids = {id(p) for p in net.critic_parameters()}
    assert not actor_ids & critic_ids
    assert actor_ids | critic_ids == {id(p) for p in net.parameters()}
    # The two heads see their own trunks: logits depend only on actor weights.
    obs = torch.randn(4, 4)
    logits, value = net(obs)
    torch.testing.assert_close(logits, net.actor(obs))
    with torch.no_grad():
        for p in net.critic_parameters():
            p.add_(1.0)
    logits2, value2 = net(obs)
    assert torch.equal(logits, logits2) and not torch.equal(value, value2)


def test_shared_kfac_module_is_whole_net() -> None:
    net = build_policy((4,), 2, MLP)
    assert net.kfac_module() is net
    assert net.critic_parameters() == []
