"""Shared pieces of the benchmark suite: the layer catalogue, FLOP counts, timing helpers and the
independent factor reference the benchmarks check their results against.

Shapes (REFERENCES.md §3.6; DESIGN.md §4):

* Nature CNN (Mnih et al. 2015; openai/baselines ``common/models.py``) at B = 640 = 32 envs × 20
  steps: conv1 8×8/4 on 4×84×84 (T = 400, K = 256), conv2 4×4/2 (T = 81, K = 512), conv3 3×3/1
  (T = 49, K = 576), fc 3136→512, policy head 512→4 (Breakout) and value head 512→1.
* MinAtar CNN (Young & Tian 2019) at B = 320 = 16 envs × 20 steps (``minatar`` family):
  conv 16 3×3/1 on 4×10×10 (T = 64, K = 36), fc 1024→128, heads 128→3 and 128→1.
* CartPole MLP at B = 256 = 16 × 16 (``classic`` family): 4→64→64 tanh, heads 64→2 and 64→1.

Inputs are what the layers see in training: frames/255 for conv1, post-ReLU (or tanh) activations
elsewhere, binary planes for MinAtar; output gradients are N(0, 1)/B (a batch-mean loss).
Under ``--benchmark-disable`` (``make test``) every batch is :data:`QUICK_BATCH` so the bodies run
in well under a second each.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

import variants

QUICK_BATCH = 4
DEVICE_ENV = "KFAC_BENCH_DEVICE"  # set by `python -m kfac_bench.bench_report run --device ...`


def bench_device() -> torch.device:
    return torch.device(os.environ.get(DEVICE_ENV, "cpu") or "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# layer catalogue


@dataclass(frozen=True)
class LayerCase:
    """One preconditioned layer of one of the benchmark networks at its training batch size."""

    net: str  # nature | minatar | mlp
    layer: str  # conv1 | conv2 | conv3 | fc | fc1 | fc2 | pi | v | conv
    batch: int
    in_shape: tuple[int, ...]  # per example
    make: Callable[[], nn.Module] = field(compare=False, repr=False)
    inputs: str = "relu"  # frames | relu | tanh | binary | obs

    @property
    def id(self) -> str:
        return f"{self.layer}-{self.net}-b{self.batch}"

    def module(self) -> nn.Module:
        torch.manual_seed(0)
        return self.make()

    def geometry(self, module: nn.Module) -> tuple[int, int, int, bool]:
        """(T, K, C_out, has_bias) of this layer."""
        if isinstance(module, nn.Conv2d):
            with torch.no_grad():
                out = module(torch.zeros(1, *self.in_shape))
            t = out.shape[2] * out.shape[3]
            k = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            return t, k, module.out_channels, module.bias is not None
        return 1, module.in_features, module.out_features, module.bias is not None


def _conv(c_in: int, c_out: int, k: int, s: int) -> Callable[[], nn.Module]:
    return lambda: nn.Conv2d(c_in, c_out, k, stride=s)


def _fc(d_in: int, d_out: int) -> Callable[[], nn.Module]:
    return lambda: nn.Linear(d_in, d_out)


LAYERS: list[LayerCase] = [
    LayerCase("nature", "conv1", 640, (4, 84, 84), _conv(4, 32, 8, 4), "frames"),
    LayerCase("nature", "conv2", 640, (32, 20, 20), _conv(32, 64, 4, 2)),
    LayerCase("nature", "conv3", 640, (64, 9, 9), _conv(64, 64, 3, 1)),
    LayerCase("nature", "fc", 640, (3136,), _fc(3136, 512)),
    LayerCase("nature", "pi", 640, (512,), _fc(512, 4)),
    LayerCase("nature", "v", 640, (512,), _fc(512, 1)),
    LayerCase("minatar", "conv", 320, (4, 10, 10), _conv(4, 16, 3, 1), "binary"),
    LayerCase("minatar", "fc", 320, (1024,), _fc(1024, 128)),
    LayerCase("minatar", "pi", 320, (128,), _fc(128, 3)),
    LayerCase("minatar", "v", 320, (128,), _fc(128, 1)),
    LayerCase("mlp", "fc1", 256, (4,), _fc(4, 64), "obs"),
    LayerCase("mlp", "fc2", 256, (64,), _fc(64, 64), "tanh"),
    LayerCase("mlp", "pi", 256, (64,), _fc(64, 2), "tanh"),
    LayerCase("mlp", "v", 256, (64,), _fc(64, 1), "tanh"),
]

# Every registered variant, so a new one gets its benchmarks by itself; until its DESIGN.md §3 row
# is added to the functions below, they raise (unknown_variant) rather than guess.
VARIANTS = variants.names()


def unknown_variant(variant: str) -> LookupError:
    return LookupError(
        f"benchlib has no DESIGN.md §3 row for variant {variant!r}: add it to factor_products, "
        "reference_factors, homogeneous_corner and deriv_trace (tests/benchmarks/benchlib.py)"
    )


def layer_inputs(
    case: LayerCase, module: nn.Module, batch: int, device: torch.device, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer input, grad_output of a batch-mean loss) with the layer's realistic statistics."""
    gen = torch.Generator().manual_seed(1)
    shape = (batch, *case.in_shape)
    if case.inputs == "frames":
        x = torch.randint(0, 256, shape, generator=gen).to(dtype) / 255.0
    elif case.inputs == "binary":
        x = (torch.rand(shape, generator=gen) < 0.1).to(dtype)
    elif case.inputs == "tanh":
        x = torch.tanh(torch.randn(shape, generator=gen, dtype=dtype))
    elif case.inputs == "obs":
        x = torch.randn(shape, generator=gen, dtype=dtype)
    else:
        x = torch.relu(torch.randn(shape, generator=gen, dtype=dtype))
    with torch.no_grad():
        out_shape = module.to(dtype)(x[:1]).shape[1:]
    g = torch.randn((batch, *out_shape), generator=gen, dtype=dtype) / batch
    return x.to(device), g.to(device)


# ---------------------------------------------------------------------------------------------
# what each variant multiplies, and its FLOPs


def factor_products(variant: str, t: int, k: int, c: int, bias: bool, batch: int):
    """The (rows, cols) of every XᵀX product a variant's factors need (A, G[, bias_G]).

    DESIGN.md §3: paper/baselines/kfac-pytorch: A over B·T patch rows of K[+1], G over B·T
    derivative rows of C; ikostrikov: A without the bias column, plus the bias block over B
    summed rows; kfac-reduce: both over B reduced rows.
    """
    kb = k + 1 if bias else k
    if variant in ("paper", "baselines", "kfac-pytorch"):
        return [(batch * t, kb), (batch * t, c)]
    if variant == "ikostrikov":
        products = [(batch * t, k), (batch * t, c)]
        return [*products, (batch, c)] if bias else products
    if variant == "kfac-reduce":
        return [(batch, kb), (batch, c)]
    raise unknown_variant(variant)


def gram_flops(rows: int, cols: int) -> int:
    """FLOPs of a full XᵀX (GEMM) with X (rows, cols): 2·rows·cols²; a SYRK does half."""
    return 2 * rows * cols * cols


# ---------------------------------------------------------------------------------------------
# independent reference for the factors (F.unfold + float64 einsum; DESIGN.md §3 table)


def reference_factors(variant: str, module: nn.Module, x: torch.Tensor, g: torch.Tensor):
    """(A, G, bias_G) by the DESIGN.md §3 formulas, float64, through ``F.unfold`` (the library
    builds patches from a strided view instead)."""
    x, g = x.double().cpu(), g.double().cpu()
    b = x.shape[0]
    if isinstance(module, nn.Conv2d):
        a = F.unfold(
            x, module.kernel_size, module.dilation, module.padding, module.stride
        ).transpose(1, 2)  # (B, T, K)
        d = g.flatten(2).transpose(1, 2) * b  # (B, T, C)
    else:
        a = x.reshape(b, 1, -1)
        d = g.reshape(b, 1, -1) * b
    t = a.shape[1]
    bias = module.bias is not None
    abar = torch.cat([a, torch.ones(b, t, 1, dtype=a.dtype)], dim=2) if bias else a

    def second_moment(rows: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bti,btj->ij", rows, rows)

    def summed_cov() -> torch.Tensor:
        summed = d.sum(1)
        return summed.T @ summed / b

    if variant == "kfac-reduce":
        means = abar.mean(1)
        return means.T @ means / b, summed_cov(), None
    gamma = second_moment(d) / (b * t)
    if variant == "paper":
        return second_moment(abar) / b, gamma, None
    if variant in ("baselines", "kfac-pytorch"):
        return second_moment(abar) / b / t**2, gamma * t**2, None
    if variant == "ikostrikov":
        return second_moment(a) / b / t**2, gamma * t**2, summed_cov() if bias else None
    raise unknown_variant(variant)


def homogeneous_corner(variant: str, t: int) -> float | None:
    """A's bias-bias entry, an exact invariant of each variant (None: no homogeneous coord)."""
    corners = {"paper": float(t), "baselines": 1 / t, "kfac-pytorch": 1 / t, "kfac-reduce": 1.0}
    if variant == "ikostrikov":
        return None
    if variant not in corners:
        raise unknown_variant(variant)
    return corners[variant]


def deriv_trace(variant: str, g: torch.Tensor) -> float:
    """trace(G) from the output gradients alone (cheap, independent of the library)."""
    b = g.shape[0]
    d = (g.double() * b).reshape(b, g.shape[1], -1) if g.dim() == 4 else (g.double() * b)[..., None]
    t = d.shape[2]
    if variant == "kfac-reduce":
        return float((d.sum(2) ** 2).sum() / b)
    gamma = float((d**2).sum() / (b * t))
    if variant == "paper":
        return gamma
    if variant in ("baselines", "kfac-pytorch", "ikostrikov"):
        return gamma * t**2
    raise unknown_variant(variant)


# ---------------------------------------------------------------------------------------------
# timing


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, synchronising CUDA around it."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def pedantic(
    benchmark,
    fn: Callable[[], object],
    device: torch.device,
    *,
    target_s: float = 1.5,
    max_rounds: int = 5,
    setup: Callable[[], None] | None = None,
):
    """Run ``fn`` under ``benchmark.pedantic`` with rounds sized from one untimed warm-up call.

    Kernels that take > ``target_s`` get one round (plus the warm-up); tiny ones get
    ``max_rounds`` rounds of many iterations so the per-call time is resolvable. With
    ``--benchmark-disable`` the body runs once. Returns ``fn``'s result.
    """
    if benchmark.disabled:  # make test: the body once (and the setup once)
        return benchmark.pedantic(fn, setup=setup, rounds=1, iterations=1)
    first = time_call(fn, device)
    if first < 1e-3:
        iterations = max(1, min(1000, int(2e-2 / max(first, 1e-7))))
        rounds = max_rounds
    else:
        iterations = 1
        rounds = max(1, min(max_rounds, int(target_s / first)))

    def timed():
        out = fn()
        synchronize(device)
        return out

    kwargs = {"setup": setup} if setup is not None else {}
    if setup is not None:
        iterations = 1  # pytest-benchmark refuses setup with iterations > 1
    return benchmark.pedantic(
        timed, rounds=rounds, iterations=iterations, warmup_rounds=0, **kwargs
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


@cache
def spd_matrix(n: int, dtype: torch.dtype, device_type: str = "cpu") -> torch.Tensor:
    """A factor-like SPD matrix: ZᵀZ/m of post-ReLU rows (non-centred, one dominant eigenvalue,
    a long tail) plus 1e-3·I, built once per (n, dtype)."""
    gen = torch.Generator().manual_seed(n)
    m = n + 64
    z = torch.relu(torch.randn(m, n, generator=gen, dtype=torch.float64))
    a = z.T @ z / m + 1e-3 * torch.eye(n, dtype=torch.float64)
    return a.to(dtype).to(device_type)


# ---------------------------------------------------------------------------------------------
# the trainer's own update on a fixed batch (no environment needed)


class ShapeOnlyEnv:
    """Stands in for the vector env when only ``Trainer.update`` is timed: it has the shapes the
    trainer builds its policy and buffers from, and nothing else (Discrete actions)."""

    continuous = False

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, obs_dtype) -> None:
        self.obs_shape, self.num_actions, self.obs_dtype = obs_shape, num_actions, obs_dtype

    def close(self) -> None:
        pass


UPDATE_NETS = {
    # net: (env id, obs shape, actions, obs dtype, K-FAC preset with the KfacConfig defaults)
    "nature": ("ALE/Breakout-v5", (4, 84, 84), 4, "uint8", "ikostrikov"),
    "minatar": ("MinAtar/Breakout-v1", (4, 10, 10), 3, "float32", "minatar-tuned"),
}


class UpdateHarness:
    """A real :class:`~kfac_bench.rl.trainer.Trainer` with a synthetic rollout: ``cycle(n)`` runs
    ``n`` consecutive ``Trainer.update`` calls on the same batch and returns their durations."""

    def __init__(
        self, net: str, preset: str, overrides: dict, n_envs: int, n_steps: int, device
    ) -> None:
        from unittest import mock

        import numpy as np

        from kfac_bench.presets import build_config
        from kfac_bench.rl import trainer as trainer_mod

        env_id, obs_shape, actions, obs_dtype, _ = UPDATE_NETS[net]
        values = {"rollout.n_envs": n_envs, "rollout.n_steps": n_steps, "device": device.type}
        self.config = build_config(env_id, preset=preset, overrides={**values, **overrides})
        env = ShapeOnlyEnv(obs_shape, actions, np.dtype(obs_dtype))
        threads = torch.get_num_threads()
        with mock.patch.object(trainer_mod, "make_env", lambda *a, **k: env):
            self.trainer = trainer_mod.Trainer(self.config, run_dir=None)
        self.trainer_threads = torch.get_num_threads()  # what the trainer asked for
        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(2)
        dtype = torch.uint8 if obs_dtype == "uint8" else torch.float32
        rollout = trainer_mod.Rollout(n_steps, n_envs, obs_shape, dtype, device)
        if dtype == torch.uint8:
            rollout.obs.copy_(torch.randint(0, 256, rollout.obs.shape, generator=gen))
        else:
            rollout.obs.copy_((torch.rand(rollout.obs.shape, generator=gen) < 0.1).float())
        rollout.actions.copy_(torch.randint(0, actions, rollout.actions.shape, generator=gen))
        batch = n_envs * n_steps
        self.rollout = rollout
        self.advantages = torch.randn(batch, generator=gen).to(device)
        self.returns = torch.randn(batch, generator=gen).to(device)
        self.device = device
        self.infos: list = []

    def update(self) -> None:
        self.trainer.update(self.rollout, self.advantages, self.returns, log=False)

    def time_phases(self) -> dict[str, float]:
        """Wrap the K-FAC phases of this trainer's optimizer with timers (instance attributes
        only; nothing in the library changes). Returns the dict of running totals (seconds)."""
        kfac = self.trainer.kfac
        totals: dict[str, float] = {}
        if kfac is None:
            return totals
        device = self.device

        def timed(name: str, fn):
            def wrapper(*args, **kwargs):
                synchronize(device)
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    synchronize(device)
                    totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

            return wrapper

        kfac.capture.output_gradients = timed("fisher_backward", kfac.capture.output_gradients)
        kfac._statistics = timed("statistics", kfac._statistics)
        kfac._refresh_decompositions = timed("decompositions", kfac._refresh_decompositions)
        for layer in kfac.layers.values():
            layer.precondition = timed("precondition", layer.precondition)
        kfac.step = timed("kfac_step", kfac.step)
        self.update = timed("update", self.update)
        return totals

    def cycle(self, n: int) -> list[float]:
        """Durations of ``n`` consecutive updates (under the trainer's own thread setting)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(self.trainer_threads)
        try:
            return [time_call(self.update, self.device) for _ in range(n)]
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        if self.trainer.kfac is not None:
            self.trainer.kfac.close(timeout_s=60)
