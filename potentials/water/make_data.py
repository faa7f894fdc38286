"""Water-trimer reference data labelled by real DFT: PBE/def2-SVP with PySCF.

Sampling: Langevin MD of (H2O)3 at 150, 300 and 500 K driven by a cheap surrogate
(Hartree–Fock/3-21G, also PySCF, 0.5 fs steps), one frame every 8 steps. Every sampled frame is
then labelled by PBE/def2-SVP (energy and forces). Only the PBE labels are used for training.
Cost: about 6 s of one core per PBE frame. Run: ``python potentials/water/make_data.py``.
"""

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from mlpot.datasets import write_splits
from mlpot.potentials import example_structure

REFERENCE = "PBE/def2-SVP (PySCF); sampled by HF/3-21G Langevin MD at 150/300/500 K"


class PySCFCalculator(Calculator):
    """Energy and forces of a molecule from PySCF (restricted KS-DFT or HF)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, method: str, basis: str, **kwargs):
        super().__init__(**kwargs)
        self.method, self.basis = method, basis

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from pyscf import dft, gto, scf

        super().calculate(atoms, properties, system_changes)
        mol = gto.M(atom=list(zip(self.atoms.get_chemical_symbols(), self.atoms.positions)),
                    basis=self.basis, unit="Angstrom", verbose=0)
        if self.method == "hf":
            solver = scf.RHF(mol)
        else:
            solver = dft.RKS(mol)
            solver.xc = self.method
        energy = solver.kernel()
        if not solver.converged:
            raise RuntimeError(f"SCF did not converge for {self.method}/{self.basis}")
        gradient = solver.nuc_grad_method().kernel()
        self.results["energy"] = energy * units.Hartree
        self.results["forces"] = -gradient * units.Hartree / units.Bohr


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "data"))
    parser.add_argument("--frames-per-temperature", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    reference = PySCFCalculator("pbe", "def2-svp")
    frames = []
    for k, temperature in enumerate((150, 300, 500)):
        # Each temperature takes ~15 CPU-minutes: keep finished ones, so a rerun resumes.
        partial = Path(args.out) / f"labelled_{temperature}K.extxyz"
        if partial.exists():
            frames += read(partial, ":")
            continue
        labelled = []
        for atoms in sample(temperature, args.frames_per_temperature, 8, args.seed + 10 * k):
            atoms.calc = reference
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
            atoms.info["temperature_K"] = temperature
            labelled.append(atoms)
        partial.parent.mkdir(parents=True, exist_ok=True)
        write(partial, labelled)
        frames += labelled
        print(f"{temperature} K: {args.frames_per_temperature} frames labelled", flush=True)
    write_splits(frames, args.out, REFERENCE, seed=args.seed)


if __name__ == "__main__":
    main()
