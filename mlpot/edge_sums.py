"""Forces and virials from the model's per-edge energy gradient g_e = ∂E/∂r_e, r_e = r_j − r_i.

The LAMMPS plugin does the same sums in C++ (``lammps_plugin/pair_mlpot.cpp``):
F_i += g_e, F_j −= g_e and W −= r_e ⊗ g_e, with W split half-half between i and j per atom.
"""

import numpy as np


def forces(i: np.ndarray, j: np.ndarray, gradient: np.ndarray, n_atoms: int) -> np.ndarray:
    result = np.zeros((n_atoms, 3))
    for k in range(3):
        result[:, k] = np.bincount(i, gradient[:, k], n_atoms) - np.bincount(j, gradient[:, k], n_atoms)
    return result


def virial(vectors: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Global virial W = −Σ_e r_e ⊗ g_e (eV); ASE's stress is −W / V."""
    return -vectors.T @ gradient


def atom_virial(i: np.ndarray, j: np.ndarray, vectors: np.ndarray, gradient: np.ndarray,
                n_atoms: int) -> np.ndarray:
    """Per-atom virials (N, 3, 3) summing to ``virial``: each edge's term split between its ends."""
    per_edge = -0.5 * (vectors[:, :, None] * gradient[:, None, :]).reshape(-1, 9)
    result = np.zeros((n_atoms, 9))
    for k in range(9):
        result[:, k] = np.bincount(i, per_edge[:, k], n_atoms) + np.bincount(j, per_edge[:, k], n_atoms)
    return result.reshape(n_atoms, 3, 3)
