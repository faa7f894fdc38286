"""The reusable end-to-end physics checks (mlpot.testing) applied to the PaiNN kind."""

import torch

from mlpot.models.painn import PaiNN
from mlpot.testing import PhysicsChecks


class TestPaiNNPhysics(PhysicsChecks):
    @classmethod
    def build_model(cls) -> PaiNN:
        torch.manual_seed(0)
        model = PaiNN(["H", "O"], cutoff=3.5, num_features=16, num_interactions=2, num_radial=6)
        # Untrained weights give O(0.1 eV) atom energies: scale them up so that the checks bite.
        model.set_energy_shift_scale(torch.tensor([-1.5, -4.0]), torch.tensor([4.0, 6.0]))
        return model
