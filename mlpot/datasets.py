"""Making reference data sets the same way for every shipped potential: strained and displaced
crystals to label, seeded splits + provenance."""

from pathlib import Path
from typing import List, Sequence

import numpy as np
from ase import Atoms
from ase.io import write


def write_splits(frames: Sequence[Atoms], out, reference: str, seed: int = 0,
                 fractions=(0.8, 0.1, 0.1)) -> dict:
    """Shuffle ``frames`` with ``seed`` into train/validation/test extxyz files in ``out``.

    ``reference`` names the method that produced the labels; it is written to ``SOURCE.txt``.
    """
    order = np.random.default_rng(seed).permutation(len(frames))
    n_val = int(round(fractions[1] * len(frames)))
    n_test = int(round(fractions[2] * len(frames)))
    splits = {"test": order[:n_test], "validation": order[n_test:n_test + n_val],
              "train": order[n_test + n_val:]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, index in splits.items():
        chosen: List[Atoms] = [frames[k] for k in sorted(index)]
        written[name] = out / f"{name}.extxyz"
        write(written[name], chosen)
        print(f"{name}: {len(chosen)} structures -> {written[name]}")
    (out / "SOURCE.txt").write_text(f"reference method: {reference}\nseed: {seed}\n")
    return written


def strained(atoms: Atoms, strain: np.ndarray) -> Atoms:
    """``atoms`` under the homogeneous (symmetric) strain ``strain``, positions scaled along."""
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    return out


#: strain magnitudes of the axial, shear and tetragonal frames (both signs)
STRAINS = (0.005, 0.01, 0.02, 0.03)


def axial_and_shear_frames(cell: Atoms, e: float):
    """Uniaxial (xx) and engineering-shear (xy) strain ``e`` of ``cell``, the shear also with the
    ions relaxed, as (name, atoms, relax the ions?): C11, C12 and C44 with and without the
    internal relaxation."""
    uniaxial = np.zeros((3, 3))
    uniaxial[0, 0] = e
    yield "eq: uniaxial", strained(cell, uniaxial), False
    shear = np.zeros((3, 3))
    shear[0, 1] = shear[1, 0] = e / 2
    yield "eq: shear", strained(cell, shear), False
    yield "eq: shear, relaxed", strained(cell, shear), True


def tetragonal_frame(cell: Atoms, e: float):
    """The volume-conserving tetragonal strain e·diag(1, −½, −½): C11 − C12 alone."""
    return "eq: tetragonal", strained(cell, e * np.diag([1.0, -0.5, -0.5])), False


def random_strain_frames(cell: Atoms, rng, n_random: int, sigmas: Sequence[float],
                         n_per_sigma: int, n_strained_displaced: int):
    """Static frames near the ideal crystal ``cell`` for stress and force-constant data, as
    (name, atoms, relax the ions?): ``n_random`` random strains up to ±1.5 % with the ions relaxed
    and as many with ideal ions; then the 2×2×2 supercell with Gaussian displacements,
    ``n_per_sigma`` for each σ (Å) of ``sigmas``, and ``n_strained_displaced`` more, strained up
    to ±1 % and displaced by σ = 0.01 Å."""
    def random_strain(limit):
        strain = rng.uniform(-limit, limit, (3, 3))
        return (strain + strain.T) / 2

    for _ in range(n_random):
        yield "eq: random strain, relaxed", strained(cell, random_strain(0.015)), True
    for _ in range(n_random):
        yield "eq: random strain", strained(cell, random_strain(0.015)), False
    supercell = cell * (2, 2, 2)
    for sigma in sigmas:
        for _ in range(n_per_sigma):
            rattled = supercell.copy()
            rattled.positions += rng.normal(0.0, sigma, rattled.positions.shape)
            yield "eq: displaced", rattled, False
    for _ in range(n_strained_displaced):
        rattled = strained(supercell, random_strain(0.01))
        rattled.positions += rng.normal(0.0, 0.01, rattled.positions.shape)
        yield "eq: strained, displaced", rattled, False
