"""Exponential moving average of the weights, used for validation, checkpoints and export.

After each optimizer step: θ_ema ← d·θ_ema + (1 − d)·θ with d = min(decay, (1 + n)/(10 + n)) for
the n-th update (the usual warm-up, so that early, random weights are forgotten quickly).
Buffers (e.g. the per-species energy shift and scale) are copied, not averaged.
"""

import copy
from typing import Dict

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        if self.decay <= 0:
            self.model.load_state_dict(model.state_dict())
            return
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for average, value in zip(self.model.parameters(), model.parameters()):
            average.mul_(d).add_(value.detach(), alpha=1.0 - d)
        for average, value in zip(self.model.buffers(), model.buffers()):
            average.copy_(value)

    def state_dict(self) -> Dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])
