"""Write a random (untrained) PaiNN model for Si/C, to try the input decks before a trained
potential is at hand: the dynamics are physically meaningless but exercise the whole pipeline.

    python make_random_model.py si.pt
"""

import sys

import torch

import mlpot
from mlpot.models import PaiNN

path = sys.argv[1] if len(sys.argv) > 1 else "random_sic.pt"
torch.manual_seed(0)
model = PaiNN(["Si", "C"], cutoff=4.0, num_features=16, num_interactions=2)
model.set_energy_shift_scale(torch.tensor([-4.6, -7.4]), torch.tensor([0.5, 0.5]))
mlpot.export_model(model, path, metadata={"note": "random weights, for trying LAMMPS decks"})
print(f"wrote {path}")
