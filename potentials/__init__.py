"""Pretrained potentials shipped with mlpot, installed as the package ``mlpot.potentials``.

Each folder holds a deployed model file (``model.pt``), its training config, the script that made
its data, and a README with the validation report. ``mlpot.load_potential("Si")`` finds them.
"""

from importlib import resources
from pathlib import Path
from typing import Dict

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule

#: name → folder; the first is the default of ``mlpot md``.
SHIPPED = {"Si": "si", "SiC": "sic", "water": "water"}


def example_structure(name: str, repeat: int = 3) -> Atoms:
    """A structure inside the training domain of a shipped potential, for demos and checks."""
    key = name.lower()
    if key == "si":
        return bulk("Si", "diamond", a=5.47, cubic=True) * (repeat, repeat, repeat)
    if key == "sic":
        return bulk("SiC", "zincblende", a=4.32, cubic=True) * (repeat, repeat, repeat)
    if key == "water":  # a roughly cyclic (H2O)3
        trimer = Atoms()
        for k in range(3):
            water = molecule("H2O")
            water.rotate(120 * k + 30, "z")
            angle = np.radians(120 * k)
            water.translate(1.65 * np.array([np.cos(angle), np.sin(angle), 0.0]))
            trimer += water
        return trimer
    raise ValueError(f"no shipped potential named {name!r}; shipped: {', '.join(SHIPPED)}")


def potential_path(name: str) -> Path:
    """The model file of a shipped potential, by name (case-insensitive)."""
    folders = {key.lower(): folder for key, folder in SHIPPED.items()}
    if name.lower() not in folders:
        raise ValueError(f"no shipped potential named {name!r}; shipped: {', '.join(SHIPPED)}")
    path = Path(str(resources.files(__name__) / folders[name.lower()] / "model.pt"))
    if not path.is_file():
        raise FileNotFoundError(f"the shipped potential {name!r} is missing its model file {path}")
    return path


def available() -> Dict[str, Path]:
    """Shipped potentials whose model files are present."""
    found = {}
    for name in SHIPPED:
        try:
            found[name] = potential_path(name)
        except FileNotFoundError:
            pass
    return found
