"""Exponential moving average of the trained parameters, in the shape of diffusers' ``EMAModel``.

``step(n)`` folds the live weights into the shadow copies; ``store`` / ``copy_to`` / ``restore`` put the
EMA weights into the model for an export or a validation and bring the live ones back. The object is
registered with ``accelerator.register_for_checkpointing`` (``state_dict`` / ``load_state_dict``), so it is
saved and restored with the run. Shadow copies are fp32 on the parameters' device.

The decay warms up as sgm's ``LitEma`` (the official training code's): update ``n`` (1, 2, ...) uses
``min(decay, (1 + n) / (10 + n))``, so the first updates follow the fast-moving weights instead of the
initial ones (``warmup: none``: the fixed ``decay`` from the first update). Copies before ``start_step`` do
not count as updates.
"""
from __future__ import annotations

from contextlib import contextmanager


class EMAModel:
    def __init__(self, parameters, decay: float, update_every: int = 1, start_step: int = 0,
                 warmup: str = "litema"):
        import torch

        if warmup not in ("litema", "none"):
            raise ValueError(f"EMA warmup {warmup!r}: expected 'litema' or 'none'")
        self.params = list(parameters)
        self.decay, self.update_every, self.start_step = float(decay), int(update_every), int(start_step)
        self.warmup = warmup
        self.shadow = [p.detach().to(torch.float32).clone() for p in self.params]
        self.num_updates = 0
        self._stored: list | None = None

    def step(self, step: int) -> None:
        """Update after optimizer step ``step`` (every ``update_every`` steps; copies until ``start_step``)."""
        import torch

        if step % self.update_every:
            return
        with torch.no_grad():
            current = [p.detach().to(torch.float32) for p in self.params]
            if step <= self.start_step:
                torch._foreach_copy_(self.shadow, current)
                return
            self.num_updates += 1
            torch._foreach_lerp_(self.shadow, current, 1.0 - self.current_decay())

    def current_decay(self) -> float:
        """The decay of update ``num_updates`` (LitEma's warm-up, or the fixed decay)."""
        if self.warmup == "none":
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    def store(self) -> None:
        """Keep a copy of the live weights (to ``restore`` them after ``copy_to``)."""
        self._stored = [p.detach().clone() for p in self.params]

    def copy_to(self) -> None:
        """Write the EMA weights into the model's parameters."""
        import torch

        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s.to(p.dtype))

    def restore(self) -> None:
        """Bring back the weights saved by ``store``."""
        import torch

        if self._stored is None:
            raise RuntimeError("EMAModel.restore without a store()")
        with torch.no_grad():
            for p, b in zip(self.params, self._stored):
                p.copy_(b)
        self._stored = None

    @contextmanager
    def applied(self):
        """The EMA weights in the model for the duration (exports, validation); the live ones after."""
        self.store()
        self.copy_to()
        try:
            yield
        finally:
            self.restore()

    def state_dict(self) -> dict:
        return {"shadow": [s.detach().cpu() for s in self.shadow], "num_updates": self.num_updates,
                "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        import torch

        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        with torch.no_grad():
            for s, v in zip(self.shadow, state["shadow"]):
                s.copy_(v.to(s.device))
        self.num_updates = int(state.get("num_updates", 0))


__all__ = ["EMAModel"]
