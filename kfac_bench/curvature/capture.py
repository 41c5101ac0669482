"""Capture: forward hooks that record a layer's input and output only inside a Fisher pass.

Outside :meth:`LayerCapture.recording` the hooks return at once, so ordinary forward/backward
passes never touch the statistics. Inside, each layer's input (detached) and output (attached to
the graph) are kept; the Fisher pass then asks autograd for d(Fisher loss)/d(output) directly,
which is exactly the ``grad_output`` a full backward hook would receive and leaves parameter
``.grad`` untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class CaptureError(RuntimeError):
    pass


class LayerCapture:
    """Hooks on named layers; ``inputs[name]`` / ``outputs[name]`` filled while recording."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers = layers
        self.recording_active = False
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int] = {}
        self._handles = [
            module.register_forward_hook(self._hook(name)) for name, module in layers.items()
        ]

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
            if not self.recording_active:
                return
            if name in self.inputs:
                raise CaptureError(
                    f"layer {name!r} ran twice in one Fisher pass; shared layers are not supported"
                )
            self.inputs[name] = inputs[0].detach()
            self.outputs[name] = output
            self._versions[name] = output._version

        return record

    @contextmanager
    def recording(self) -> Iterator[None]:
        self.clear()
        self.recording_active = True
        try:
            yield
        finally:
            self.recording_active = False

    def output_gradients(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """d loss / d output for every recorded layer (graph retained for the training loss)."""
        missing = [name for name in self.layers if name not in self.outputs]
        if missing:
            raise CaptureError(f"layers not run in the Fisher pass forward: {', '.join(missing)}")
        for name, output in self.outputs.items():
            if output._version != self._versions[name]:
                raise CaptureError(
                    f"the output of layer {name!r} was modified in place after it was recorded "
                    "(e.g. ReLU(inplace=True)); K-FAC needs the pre-activation gradient"
                )
        names = list(self.outputs)
        grads = torch.autograd.grad(
            loss, [self.outputs[n] for n in names], retain_graph=True, allow_unused=True
        )
        unused = [n for n, g in zip(names, grads) if g is None]
        if unused:
            raise CaptureError(f"the Fisher loss does not depend on layers: {', '.join(unused)}")
        return dict(zip(names, grads))

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()
        self._versions.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class FisherPass:
    """Handle yielded by ``KFAC.fisher_pass``: ``backward(fisher_loss)`` hands d(Fisher loss)/
    d(outputs) of the recorded layers to ``take`` (once); a no-op when statistics are not due."""

    def __init__(
        self,
        capture: LayerCapture,
        due: bool,
        take: Callable[[dict[str, torch.Tensor]], None],
    ) -> None:
        self.capture = capture
        self.due = due
        self.take = take
        self.done = False

    def backward(self, fisher_loss: torch.Tensor) -> None:
        if not self.due:
            return
        if self.done:
            raise CaptureError("fisher.backward() called twice in one Fisher pass")
        self.take(self.capture.output_gradients(fisher_loss))
        self.done = True
