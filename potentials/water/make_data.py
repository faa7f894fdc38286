"""Water-trimer reference data labelled by real DFT: PBE/def2-SVP with PySCF.

Sampling: Langevin MD of (H2O)3 at 150, 300 and 500 K driven by a cheap surrogate
(Hartree–Fock/3-21G, also PySCF, 0.5 fs steps), one frame every 8 steps; then 60 of the 300 K
frames with every monomer bent and stretched at random (H–O–H 60–145°, O–H 0.85–1.20 Å), far
beyond thermal MD (93–123°): without them a model has no bending wall and collapses a monomer
(H–O–H → 20°) within picoseconds of NVE. Every frame is then labelled by PBE/def2-SVP (energy
and forces). Only the PBE labels are used for training. Cost: about 6 s of one core per PBE
frame. Run: ``python potentials/water/make_data.py``.
"""

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from mlpot.datasets import write_splits
from mlpot.potentials import example_structure
from mlpot.validate import PySCFCalculator

REFERENCE = ("PBE/def2-SVP (PySCF); sampled by HF/3-21G Langevin MD at 150/300/500 K, plus "
             "300 K frames with randomly bent and stretched monomers")
#: train / validation / test: a test set of 54 frames holds the 40-frame regression slice
FRACTIONS = (0.75, 0.10, 0.15)
#: ranges of the distorted monomers: H–O–H angle (degrees) and O–H bond lengths (Å)
ANGLES, BONDS = (60.0, 145.0), (0.85, 1.20)


def sample(temperature: float, frames: int, every: int, seed: int) -> list:
    atoms = example_structure("water")
    atoms.calc = PySCFCalculator("hf", "3-21g")
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.02,
                        fixcm=False,
                        rng=np.random.default_rng(seed + 1))
    dynamics.run(100)  # equilibrate
    sampled = []
    for _ in range(frames):
        dynamics.run(every)
        sampled.append(Atoms(atoms.get_chemical_symbols(), atoms.positions.copy()))
    return sampled


def distort(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    """``atoms`` (monomers as O, H, H) with each monomer's H–O–H angle and O–H lengths drawn
    from ``ANGLES`` and ``BONDS``, in the monomer's plane and about its bisector."""
    distorted = Atoms(atoms.get_chemical_symbols(), atoms.positions.copy())
    for o in range(0, len(atoms), 3):
        bonds = atoms.positions[o + 1:o + 3] - atoms.positions[o]
        directions = bonds / np.linalg.norm(bonds, axis=1)[:, None]
        bisector = directions.sum(axis=0) / np.linalg.norm(directions.sum(axis=0))
        normal = np.cross(directions[0], directions[1])
        across = np.cross(normal / np.linalg.norm(normal), bisector)
        half = np.radians(rng.uniform(*ANGLES)) / 2
        for k in range(2):
            side = np.sign(directions[k] @ across)
            direction = np.cos(half) * bisector + side * np.sin(half) * across
            distorted.positions[o + 1 + k] = atoms.positions[o] + rng.uniform(*BONDS) * direction
    return distorted


def label(make_structures, reference, partial: Path, **info) -> list:
    """Reference energies and forces of ``make_structures()``, kept in ``partial``: a rerun
    reads them instead of sampling and labelling again."""
    if partial.exists():
        return read(partial, ":")
    labelled = []
    for atoms in make_structures():
        atoms.calc = reference
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info.update(info)
        labelled.append(atoms)
    partial.parent.mkdir(parents=True, exist_ok=True)
    write(partial, labelled)
    print(f"{partial.name}: {len(labelled)} frames labelled", flush=True)
    return labelled


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "data"))
    parser.add_argument("--frames-per-temperature", type=int, default=100)
    parser.add_argument("--distorted-frames", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    reference = PySCFCalculator("pbe", "def2-svp")
    out = Path(args.out)
    frames = []
    for k, temperature in enumerate((150, 300, 500)):  # ~15 CPU-minutes each
        sampled = label(lambda: sample(temperature, args.frames_per_temperature, 8,
                                       args.seed + 10 * k),
                        reference, out / f"labelled_{temperature}K.extxyz",
                        temperature_K=temperature)
        for atoms in sampled:
            atoms.info["config_type"] = f"MD {temperature} K"
        frames += sampled
    rng = np.random.default_rng(args.seed + 100)
    thermal = [frame for frame in frames if frame.info["temperature_K"] == 300]
    chosen = rng.choice(len(thermal), args.distorted_frames, replace=False)
    distorted = label(lambda: [distort(thermal[k], rng) for k in chosen], reference,
                      out / "labelled_distorted.extxyz", temperature_K=300)
    for atoms in distorted:
        atoms.info["config_type"] = "distorted monomers"
    write_splits(frames + distorted, out, REFERENCE, seed=args.seed, fractions=FRACTIONS)


if __name__ == "__main__":
    main()
