"""The training loss and the error metrics, both normalised by *global* counts.

loss = w_E · Σ_s ρ(ΔE_s / N_s) / n_structures
     + w_F · Σ_{atoms, xyz} ρ(ΔF) / n_force_components
     + w_S · Σ_{s, 3×3} ρ(Δσ) / n_stress_components
with ρ the squared error (``mse``) or the Huber function. Dividing by the counts of the whole
(global) batch, not of one rank's share, makes the per-rank losses add up to the single-process
loss, so summing gradients over ranks reproduces single-process training.
"""

from typing import Dict

import torch

from .batch import Batch

#: order of the accumulated sums (one float64 vector, so ranks can all-reduce it in one call)
FIELDS = ["energy_n", "energy_abs", "energy_sq", "energy_rho",
          "forces_n", "forces_abs", "forces_sq", "forces_rho",
          "stress_n", "stress_abs", "stress_sq", "stress_rho"]
TERMS = ("energy", "forces", "stress")


class Loss:
    def __init__(self, config_loss: Dict):
        self.weights = {term: float(config_loss[term]) for term in TERMS}
        self.type = config_loss["type"]
        self.delta = float(config_loss["huber_delta"])

    @property
    def needs_stress(self) -> bool:
        return self.weights["stress"] > 0

    def rho(self, error: torch.Tensor) -> torch.Tensor:
        if self.type == "huber":
            return torch.nn.functional.huber_loss(error, torch.zeros_like(error), reduction="none",
                                                  delta=self.delta)
        return error * error

    @staticmethod
    def errors(prediction: Dict[str, torch.Tensor], batch: Batch) -> Dict[str, torch.Tensor]:
        """Flat error tensors: energy per atom [B], force components, stress components."""
        errors = {
            "energy": (prediction["energy"] - batch.energy) / batch.num_atoms,
            "forces": (prediction["forces"] - batch.forces)[batch.force_mask].reshape(-1),
        }
        if "stress" in prediction:
            errors["stress"] = (prediction["stress"] - batch.stress)[batch.stress_mask].reshape(-1)
        return errors

    def __call__(self, errors: Dict[str, torch.Tensor], counts: Dict[str, float]) -> torch.Tensor:
        """This rank's share of the loss of a batch whose global counts are ``counts``."""
        total = None
        for term in TERMS:
            if self.weights[term] == 0 or term not in errors or counts[term] == 0:
                continue
            value = self.weights[term] * self.rho(errors[term]).sum() / counts[term]
            total = value if total is None else total + value
        return total

    def accumulate(self, sums: torch.Tensor, errors: Dict[str, torch.Tensor]) -> None:
        """Add a batch's error sums into ``sums`` (float64, laid out as ``FIELDS``)."""
        with torch.no_grad():
            for k, term in enumerate(TERMS):
                if term not in errors:
                    continue
                e = errors[term].detach().to(torch.float64)
                sums[4 * k] += e.numel()
                sums[4 * k + 1] += e.abs().sum()
                sums[4 * k + 2] += (e * e).sum()
                sums[4 * k + 3] += self.rho(e).sum()

    def metrics(self, sums: torch.Tensor) -> Dict[str, float]:
        """MAE/RMSE per term and the set-level loss from (all-reduced) sums."""
        result, loss = {}, 0.0
        for k, term in enumerate(TERMS):
            n = float(sums[4 * k])
            if n == 0:
                continue
            result[f"{term}_mae"] = float(sums[4 * k + 1]) / n
            result[f"{term}_rmse"] = (float(sums[4 * k + 2]) / n) ** 0.5
            loss += self.weights[term] * float(sums[4 * k + 3]) / n
        result["loss"] = loss
        return result


def new_sums() -> torch.Tensor:
    return torch.zeros(len(FIELDS), dtype=torch.float64)


def global_counts(graphs, with_stress: bool) -> Dict[str, float]:
    """Numbers of error components in a (global) batch of graphs: the loss normalisers."""
    return {
        "energy": float(len(graphs)),
        "forces": float(sum(3 * g.num_atoms for g in graphs if g.forces is not None)),
        "stress": float(sum(9 for g in graphs if g.stress is not None)) if with_stress else 0.0,
    }
