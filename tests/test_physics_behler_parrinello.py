"""The reusable end-to-end physics checks (mlpot.testing) applied to the Behler–Parrinello kind."""

import numpy as np
import torch
from ase.neighborlist import neighbor_list

from mlpot.models.behler_parrinello import BehlerParrinello
from mlpot.testing import PhysicsChecks, make_structure, STRUCTURES

SPECIES = ["H", "O"]
CUTOFF = 3.5


def symmetry_functions():
    """A small mixed set: G2, G4 and G5 with the C² polynomial cutoff."""
    return {
        "cutoff": CUTOFF,
        "cutoff_function": "polynomial",
        "radial": [[0.5, 0.0], [1.0, 1.0], [1.5, 2.0], [2.0, 2.8]],
        "angular": [["G4", 0.1, 1.0, 1.0], ["G4", 0.1, 2.0, -1.0], ["G5", 0.3, 4.0, 1.0],
                    ["G5", 0.05, 1.5, -1.0]],
    }


class TestBehlerParrinelloPhysics(PhysicsChecks):
    @classmethod
    def build_model(cls) -> BehlerParrinello:
        torch.manual_seed(0)
        model = BehlerParrinello(SPECIES, symmetry_functions(), hidden_layers=[16, 16]).double()
        # Normalise the features on the test structures themselves and give the untrained
        # networks an O(eV) energy scale, so that the checks bite.
        descriptors, species = [], []
        for name in STRUCTURES:
            atoms = make_structure(name, SPECIES, CUTOFF)
            i, j, d = neighbor_list("ijD", atoms, CUTOFF)
            z = torch.tensor([SPECIES.index(s) for s in atoms.get_chemical_symbols()])
            descriptors.append(model.descriptors(z, torch.from_numpy(np.stack([i, j])),
                                                 torch.from_numpy(d)))
            species.append(z)
        model.fit_normalisation(torch.cat(descriptors), torch.cat(species))
        model.set_energy_shift_scale(torch.tensor([-1.5, -4.0]), torch.tensor([4.0, 6.0]))
        return model
