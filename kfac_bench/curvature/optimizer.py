"""``KFAC``: the preconditioned trust-region step, usable on any model of Linear/Conv2d layers.

Lifecycle of one update (what the trainer does)::

    with kfac.fisher_pass() as fisher:        # records layer inputs/outputs (only if stats are due)
        logits, value = model(obs)
        fisher.backward(fisher_loss)          # d(Fisher loss)/d(outputs) -> factors -> running avg
    optimizer.zero_grad(); kfac.backward(training_loss)   # the same graph (or loss.backward())
    info = kfac.step()                        # precondition .grad, trust region, momentum

``kfac.backward`` reuses the statistics' patch rows for the weight gradients when they were
computed synchronously from the whole batch (``curvature/weight_grad.py``), else it is
``loss.backward()``.

Step (openai/baselines ``baselines/acktr/kfac.py`` lines 779-801, 879-893)::

    Δ_l = F̃_l⁻¹ g_l                                 (inverse.py, per layer)
    q   = Σ_l ⟨Δ_l, g_l⟩
    ν   = trust_region_scale(q, lr, δ)              (trust_region.py: the four rules)
    buf ← μ·buf + ν·Δ;   θ ← θ − lr·(1−μ)·buf       (momentum_scale "1-mu"; "1": θ ← θ − lr·buf, KP)

``predicted_kl`` per step is the quadratic model's KL of the steady-state step lr·ν·Δ, ½·lr²·ν²·q;
:meth:`KFAC.applied_step_kl` is ½·Δθᵀ F̃ Δθ of the step actually applied (momentum, cold steps,
clipping included), F̃ the undamped block-diagonal Kronecker Fisher: per layer ⟨ΔW, G·ΔW·A⟩.

Cold start (baselines, ``cold_iters`` > 0): the first updates are momentum SGD (lr·``cold_lr_scale``,
μ_cold, no (1−μ)) on gradients clipped to ``cold_clip`` while the statistics already accumulate
(kfac.py:898-922).

Parameters outside Linear/Conv2d: a parameter with a known, constant diagonal Fisher (a Gaussian
policy's log σ: 2 per entry, ``rl/distributions.py``) can be handed in as ``exact_diagonal``; its
Δ = g / (F + λ) with λ = ``kfac.damping`` joins the same trust region and momentum, and its ½·F·Δθ²
joins ``applied_step_kl``. Parameters handed in as ``plain`` are stepped with Δ = g inside the trust
region (what openai/baselines' K-FAC does with a variable it has no factors for, e.g. the
log-std of ``acktr/policies.py``). Any other such parameter is an error unless
``kfac.unsupported = "sgd"``.

Decompositions are recomputed every ``inverse_every`` preconditioned steps from the current running
factors (ikostrikov ``algo/kfac.py`` Tf = 10, ACKTR-PyTorch Tf = 10). ``StepInfo.staleness`` is the
number of updates between the statistics a step's decomposition was computed from and the step.
``async_inverse`` (``inverse.InverseJob``): a due decomposition runs on a background thread from a
snapshot and is installed exactly ``async_staleness`` steps later (the first is synchronous).
``pipelined_stats`` (``curvature/pipeline.py``): a batch's statistics run on a background thread
after the step and are folded at the next (``StepInfo.stats_staleness`` = 1).
``damping_mode = "ekfac"`` (``curvature/ekfac.py``): every ``ekfac_scale_every``-th Fisher pass keeps
its inputs and output gradients until ``step``, which refreshes the decompositions, then folds that
pass into s (KFAC-Pytorch ``EKFACOptimizer.step`` order). Neither overlap combines with ekfac.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from kfac_bench import timing
from kfac_bench.config import KfacConfig
from kfac_bench.curvature.adapters import (
    LayerBatch,
    UnsupportedLayerError,
    Workspace,
    layer_batch,
    using_workspace,
)
from kfac_bench.curvature.applied_kl import Applied, applied_step_kl
from kfac_bench.curvature.capture import CaptureError, FisherPass, LayerCapture
from kfac_bench.curvature.ekfac import fold_kept_passes
from kfac_bench.curvature.factors import Factors, FactorStrategy, InitRule
from kfac_bench.curvature.inverse import (
    FactorInverseError,
    InverseJob,
    torch_threads,
)
from kfac_bench.curvature.layer_state import (
    KfacError,
    LayerState,
    StepInfo,
    check_finite_factors,
    check_schedule,
    factor_diagnostics,
    find_layers,
)
from kfac_bench.curvature.pipeline import BackgroundSlot
from kfac_bench.curvature.trust_region import trust_region_scale
from kfac_bench.curvature.weight_grad import RecordedLayer, backward_reusing_patches


class KFAC(torch.optim.Optimizer):
    """K-FAC with a pluggable factor strategy (a variant) and the ACKTR trust-region step."""

    def __init__(
        self,
        model: nn.Module,
        variant: FactorStrategy,
        config: KfacConfig,
        lr: float,
        cold_clip: float | None = None,
        *,
        exact_diagonal: dict[nn.Parameter, float] | None = None,
        plain: list[nn.Parameter] | None = None,
        timed: bool = True,
    ) -> None:
        # stats / inverse / precondition on the process's phase clock (kfac_bench/timing.py);
        # a separate critic's K-FAC is timed as a whole by its caller instead
        self._phase = timing.phase if timed else lambda name: nullcontext()
        layers, others = find_layers(model)
        if not layers:
            raise UnsupportedLayerError(
                "the model has no nn.Linear or nn.Conv2d layer to precondition"
            )
        named = dict(model.named_parameters())
        self.exact_diagonal = dict(exact_diagonal or {})
        plain_ids = {id(p) for p in plain or []}
        handled = {id(p) for p in self.exact_diagonal} | plain_ids
        plain_names = [n for n in others if id(named[n]) in plain_ids]
        others = [n for n in others if id(named[n]) not in handled]
        if others and config.unsupported == "error":
            raise UnsupportedLayerError(
                "K-FAC preconditions nn.Linear and nn.Conv2d only; these parameters belong to other "
                f"layers: {', '.join(others)} (set kfac.unsupported='sgd' to step them unpreconditioned)"
            )
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, {"lr": lr, "kl_clip": config.kl_clip})
        self.model = model
        self.variant = variant
        self.config = config
        self.cold_clip = cold_clip
        # stepped with their plain gradient: the `plain` ones and, under unsupported="sgd", the rest
        self.unsupported_params = [named[n] for n in [*plain_names, *others]]
        self.unsupported_names = [*plain_names, *others]
        dtype = torch.float64 if config.dtype == "float64" else torch.float32
        init = (
            variant.running_init
            if config.running_init == "variant"
            else InitRule(config.running_init, config.init_average_steps)
        )
        self.layers = {
            name: LayerState(name, module, config.stats_decay, init, dtype)
            for name, module in layers.items()
        }
        self.capture = LayerCapture(layers)
        self.updates = 0  # calls to step()
        self.kfac_steps = 0  # preconditioned steps taken
        self.stats_updates = 0  # Fisher passes folded into the running averages
        check_schedule(config)
        # pipelined_stats (curvature/pipeline.py): this update's Fisher batch, not yet folded, and
        # the previous one's statistics being computed on a background thread
        self._taken: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self._stats_thread: BackgroundSlot[dict[str, Factors]] = BackgroundSlot("kfac-stats")
        self._job: InverseJob | None = None  # the background decomposition in flight
        # ekfac: (layer input, grad_output) of the last Fisher pass whose scaling is due
        self._scale_batch: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._workspace = Workspace()  # patch/gradient rows reused across Fisher passes
        self._recorded: dict[str, RecordedLayer] = {}  # this update's, for kfac.backward
        self._decomposed_at = 0  # kfac step whose statistics the decompositions in use come from
        self.inverse_staleness = 0  # StepInfo.staleness of the last step
        self.inverse_seconds = math.nan  # wall time of the last background decomposition
        self._applied: Applied = {}  # the last applied step, Δθ_p = −scale·update

    # --- statistics -----------------------------------------------------------------------
    def statistics_due(self) -> bool:
        return self.updates % self.config.stats_every == 0

    @contextmanager
    def fisher_pass(self) -> Iterator[FisherPass]:
        """Record this forward for the Fisher loss (only when statistics are due this update)."""
        handle = FisherPass(self.capture, self.statistics_due(), self._take_batch)
        self._recorded = {}
        if not handle.due:
            yield handle
            return
        with self.capture.recording():
            yield handle
        if not handle.done:
            raise KfacError("a Fisher pass ended without fisher.backward(loss)")

    def _take_batch(self, grad_outputs: dict[str, torch.Tensor]) -> None:
        """A Fisher pass's batch: folded now, or kept for the pipeline (after the first batch)."""
        inputs, outputs = dict(self.capture.inputs), dict(self.capture.outputs)
        self.capture.clear()
        if self.config.pipelined_stats and self.stats_updates > 0:
            self._taken = (inputs, grad_outputs)
            return
        # the rows are kept for kfac.backward only when they are the whole batch's
        kept: dict[str, LayerBatch] | None = {} if self.config.stats_batch_fraction == 1 else None
        with self._phase("stats"):
            self._fold(self._statistics(inputs, grad_outputs, kept))
        self._recorded = {
            name: RecordedLayer(self.layers[name].module, outputs[name], batch)
            for name, batch in (kept or {}).items()
        }

    def backward(self, loss: torch.Tensor, params: Iterable[nn.Parameter] | None = None) -> None:
        """Accumulate ∂loss/∂θ into ``.grad`` as ``loss.backward()`` does. With this update's
        patch rows (module docstring) the layers' weight gradients come from them and autograd
        computes the rest of ``params`` (default: the model's): pass every parameter to reach."""
        recorded, self._recorded = self._recorded, {}
        if not recorded:
            loss.backward()
            return
        backward_reusing_patches(
            loss, recorded, self.model.parameters() if params is None else params
        )

    @torch.no_grad()
    def _statistics(
        self,
        inputs: dict[str, torch.Tensor],
        grad_outputs: dict[str, torch.Tensor],
        batches: dict[str, LayerBatch] | None = None,
    ) -> dict[str, Factors]:
        """Each layer's factor statistic of one Fisher batch (reads the batch, writes no state
        but the ekfac scale batch, so it may run on the pipeline's thread). With ``batches``,
        each layer's LayerBatch goes there, its patch rows in a workspace slot of its own (else
        all layers share one)."""
        fraction = self.config.stats_batch_fraction
        scale_due = (
            self.config.damping_mode == "ekfac"
            and self.stats_updates % self.config.ekfac_scale_every == 0
        )
        stats = {}
        with using_workspace(self._workspace):
            for name, layer in self.layers.items():
                layer_input, grad_output = inputs[name], grad_outputs[name]
                if fraction < 1.0:
                    full = layer_input.shape[0]
                    rows = max(1, math.ceil(fraction * full))
                    # keep ĝ = B_full·g: the variant multiplies by its own (smaller) batch size
                    layer_input = layer_input[:rows]
                    grad_output = grad_output[:rows] * (full / rows)
                batch = layer_batch(layer.module, layer_input, grad_output)
                if batches is not None:
                    batch.scratch_slot = name
                    batches[name] = batch
                stats[name] = self.variant.from_batch(batch)
                if scale_due:
                    self._scale_batch[name] = (layer_input, grad_output)
        return stats

    @torch.no_grad()
    def _fold(self, stats: dict[str, Factors]) -> None:
        for name, factors in stats.items():
            self.layers[name].fold(factors)
        self.stats_updates += 1
        check_finite_factors(self.layers.values())

    def _join_statistics(self) -> None:
        """Fold the pipeline's statistics in flight, if any (waiting for them)."""
        if self._stats_thread.busy:
            with self._phase("stats"):
                self._fold(self._stats_thread.join())

    # --- inverse ----------------------------------------------------------------------------
    def _check_ready_to_invert(self) -> None:
        if self.stats_updates == 0:
            raise KfacError("K-FAC step before any Fisher pass: no statistics to invert")
        for layer in self.layers.values():
            layer.check_structure()

    def _invert_all(self) -> None:
        self._check_ready_to_invert()
        try:
            with torch_threads(self.config.inverse_threads):
                for layer in self.layers.values():
                    layer.invert(self.config)
        except FactorInverseError as error:
            raise KfacError(str(error)) from error

    def _refresh_decompositions(self) -> bool:
        """Recompute (sync) or start/install (async) the decompositions for step ``kfac_steps``.

        Returns whether a new decomposition is in use from this step on.
        """
        step = self.kfac_steps
        c = self.config
        due = step % c.inverse_every == 0
        missing = any(layer.weights is None for layer in self.layers.values())
        installed = False
        if not c.async_inverse or missing:
            if due or missing:
                self._invert_all()
                self._decomposed_at = step
                installed = True
        else:
            if self._job is not None and step >= self._job.install_step:
                self._install(self._job)
                installed = True
            if due:
                self._check_ready_to_invert()
                snapshot = {name: layer.snapshot() for name, layer in self.layers.items()}
                self._job = InverseJob(
                    snapshot, c, snapshot_step=step, install_step=step + c.async_staleness
                )
        self.inverse_staleness = step - self._decomposed_at
        return installed

    def _install(self, job: InverseJob) -> None:
        try:
            result = job.wait(self.config.async_timeout_s)
        except FactorInverseError as error:
            self._job = None
            raise KfacError(str(error)) from error
        for name, layer in self.layers.items():
            layer.install(result[name])
        self._decomposed_at = job.snapshot_step
        self.inverse_seconds = job.seconds
        self._job = None

    def close(self, timeout_s: float | None = None) -> None:
        """Wait (at most ``timeout_s``, default ``async_timeout_s``) for a background
        decomposition in flight, then drop it. Never blocks longer; idempotent."""
        self._stats_thread.close()
        job, self._job = self._job, None
        if job is not None and job._thread is not None:
            limit = self.config.async_timeout_s if timeout_s is None else timeout_s
            job._thread.join(limit)

    # --- step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None) -> StepInfo:
        self._recorded = {}
        self._join_statistics()
        info = self._step()
        if self._taken is None:
            return info
        inputs, grad_outputs = self._taken
        self._taken = None
        self._stats_thread.submit(lambda: self._statistics(inputs, grad_outputs))
        return dataclasses.replace(info, stats_staleness=1)

    def _step(self) -> StepInfo:
        lr = float(self.param_groups[0]["lr"])
        self.updates += 1
        if self.updates <= self.config.cold_iters:
            return self._cold_step(lr * self.config.cold_lr_scale)
        with self._phase("inverse"):
            inverted = self._refresh_decompositions()
        self.kfac_steps += 1
        if self._scale_batch:  # ekfac: after the refresh, in the basis about to be used
            decay = self.config.ekfac_scale_decay
            decay = self.config.stats_decay if decay is None else decay
            fold_kept_passes(self.layers, self._scale_batch, decay, self._workspace)

        self._applied.clear()
        pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        with self._phase("precondition"):
            for layer in self.layers.values():
                if layer.module.weight.grad is not None:
                    pairs.extend(layer.precondition())
        pairs.extend(
            (p, p.grad.to(self.layers_dtype)) for p in self.unsupported_params if p.grad is not None
        )
        damping = self.config.damping
        pairs.extend(
            (p, p.grad.to(self.layers_dtype) / (fisher + damping))
            for p, fisher in self.exact_diagonal.items()
            if p.grad is not None
        )
        if not pairs:
            raise KfacError(
                "K-FAC step with no gradients (call backward on the training loss first)"
            )
        q = torch.stack([(delta * p.grad).sum() for p, delta in pairs]).sum()
        nu = self._trust_region(q, lr)
        momentum = self.config.momentum
        scale = lr * (1.0 - momentum) if self.config.momentum_scale == "1-mu" else lr
        for p, delta in pairs:
            update = (nu * delta).to(p.dtype)
            if momentum > 0:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                update = state["momentum_buffer"].mul_(momentum).add_(update)
            p.add_(update, alpha=-scale)
            self._applied[p] = (update, scale)
        predicted = 0.5 * lr**2 * nu**2 * q
        return StepInfo(
            lr, nu, q, predicted, cold=False, inverted=inverted, staleness=self.inverse_staleness
        )

    @property
    def layers_dtype(self) -> torch.dtype:
        return torch.float64 if self.config.dtype == "float64" else torch.float32

    def _trust_region(self, q: torch.Tensor, lr: float) -> torch.Tensor:
        delta = float(self.param_groups[0].get("kl_clip", self.config.kl_clip))  # schedulable
        return trust_region_scale(q, lr, delta, self.config.trust_region, self.config.max_nu)

    def _cold_step(self, lr: float) -> StepInfo:
        self._applied.clear()
        self._scale_batch.clear()  # no basis yet: s starts at the first decomposition
        params = [p for p in self.param_groups[0]["params"] if p.grad is not None]
        if self.cold_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.cold_clip)
        for p in params:
            state = self.state[p]
            if "cold_buffer" not in state:
                state["cold_buffer"] = torch.zeros_like(p)
            buf = state["cold_buffer"].mul_(self.config.cold_momentum).add_(p.grad)
            p.add_(buf, alpha=-lr)
            self._applied[p] = (buf, lr)
        zero = torch.zeros(())
        return StepInfo(lr, torch.ones(()), zero, zero, cold=True, inverted=False)

    def applied_step_kl(self, params: set[nn.Parameter] | None = None) -> torch.Tensor:
        """½·Δθᵀ F̃ Δθ of the last step actually applied (``curvature/applied_kl.py``)."""
        layers, applied = self.layers.values(), self._applied
        return applied_step_kl(layers, applied, self.exact_diagonal, self.layers_dtype, params)

    # --- diagnostics and state --------------------------------------------------------------
    def diagnostics(self) -> dict[str, float]:
        """Per-layer traces, condition numbers and clipped-eigenvalue counts of the last inverse."""
        return factor_diagnostics(self.layers)

    def state_dict(self) -> dict:
        self._join_statistics()  # the factors as the next step will see them
        base = super().state_dict()
        state = {
            "optimizer": base,
            "layers": {name: layer.state_dict() for name, layer in self.layers.items()},
            "counters": [self.updates, self.kfac_steps, self.stats_updates],
            "decomposed_at": self._decomposed_at,
        }
        if self._job is not None:  # a background decomposition in flight: wait and keep it
            try:
                state["pending_inverse"] = self._job.state_dict(self.config.async_timeout_s)
            except FactorInverseError as error:
                raise KfacError(str(error)) from error
        return state

    def load_state_dict(self, state: dict) -> None:
        state = copy.deepcopy(state)  # running averages are updated in place later
        super().load_state_dict(state["optimizer"])
        for name, layer in self.layers.items():
            layer.load_state_dict(state["layers"][name])
        self.updates, self.kfac_steps, self.stats_updates = state["counters"]
        self._decomposed_at = int(state.get("decomposed_at", 0))
        self._job = None
        pending = state.get("pending_inverse")
        if pending is not None:
            self._job = InverseJob.from_state_dict(pending)


__all__ = ["KFAC", "CaptureError", "KfacError", "StepInfo", "find_layers"]
