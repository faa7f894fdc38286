"""Make a small labelled data set for the training example: rattled, strained fcc Cu–Au cells
(8–32 atoms) with energies, forces and stresses from ase's EMT calculator.

    python make_data.py            # writes cuau.extxyz (about 150 structures, a few seconds)

EMT stands in for DFT here: replace it with your reference calculations and keep the rest.
"""

import sys

import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def structures(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for k in range(n):
        repeat = [(1, 1, 2), (1, 2, 2), (2, 2, 2)][k % 3]
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * repeat
        gold = rng.random()  # composition from pure Cu to pure Au
        atoms.set_chemical_symbols(["Au" if rng.random() < gold else "Cu" for _ in atoms])
        a = 3.61 + 0.47 * np.mean(atoms.numbers == 79)  # Vegard's law between Cu and Au
        atoms.set_cell(atoms.cell * a / 3.7, scale_atoms=True)
        strain = np.eye(3) + rng.normal(scale=0.015, size=(3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.rattle(rng.uniform(0.02, 0.12), seed=seed * 100_000 + k)
        atoms.calc = EMT()
        labels = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                      stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **labels)
        yield atoms


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    images = list(structures(n))
    ase.io.write("cuau.extxyz", images)
    print(f"wrote cuau.extxyz: {len(images)} structures, "
          f"{sum(len(a) for a in images)} atoms")
