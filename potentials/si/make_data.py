"""Silicon reference data: real PBE energies and forces from the pyxtal_ff data set.

Source: the ``pyxtal_ff`` source distribution on PyPI (MIT licence), file
``pyxtal_ff/datasets/Si/PyXtal/Si.json``: 6,887 periodic Si structures of 1–16 atoms with PBE
(VASP) energies and forces, no stress (Yanxon, Zagaceta, Tang, Matteson, Zhu, "PyXtal_FF: a python
library for automated force field generation", Mach. Learn.: Sci. Technol. 2, 027001 (2021)).

This script downloads the sdist with pip, drops duplicates and high-energy outliers
(E/atom > −3 eV or any |F| > 20 eV/Å), and writes train/validation/test extxyz files split by a
fixed seed. Run: ``python potentials/si/make_data.py [--out potentials/si/data]``.
"""

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlpot.datasets import write_splits

MEMBER = "pyxtal_ff/datasets/Si/PyXtal/Si.json"
REFERENCE = "PBE (VASP), pyxtal_ff Si data set (PyPI sdist pyxtal_ff 0.2.3)"


def fetch_records(version: str = "0.2.3") -> list:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", f"pyxtal_ff=={version}", "-d", folder], check=True)
        archive = next(Path(folder).glob("pyxtal_ff-*.tar.gz"))
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(MEMBER))
            return json.load(tar.extractfile(member))


def to_atoms(record: dict) -> Atoms:
    atoms = Atoms(record["elements"], cell=record["lattice"]["data"], pbc=True,
                  scaled_positions=record["coords"]["data"])
    atoms.calc = SinglePointCalculator(atoms, energy=float(record["energy"]),
                                       forces=np.array(record["force"], dtype=float))
    return atoms


def clean(frames: list) -> list:
    """Drop exact duplicates and the high-energy outliers the data set is known to contain."""
    kept, seen = [], set()
    for atoms in frames:
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        key = (len(atoms), round(energy, 6), round(float(np.abs(forces).sum()), 5),
               round(float(atoms.get_volume()), 4))
        if key in seen:
            continue
        seen.add(key)
        if energy / len(atoms) > -3.0 or np.abs(forces).max() > 20.0:
            continue
        kept.append(atoms)
    return kept


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    frames = clean([to_atoms(r) for r in fetch_records()])
    write_splits(frames, args.out, REFERENCE, seed=args.seed)


if __name__ == "__main__":
    main()
