"""Neighbour lists for mlpot: drop-in replacements for ``ase.neighborlist.neighbor_list`` and
``matscipy.neighbours.neighbour_list``, backed by the O(N) C++ kernel (cpp_ext/neighbour_list.cpp).

The kernel handles triclinic cells, mixed periodicity, cutoffs longer than the cell and atoms
outside the cell; shifts ``S`` always refer to the positions as given, so that
``D = positions[j] - positions[i] + S @ cell``. Pairs are sorted by ``i``.
"""

import numpy as np
from ase.data import atomic_numbers

from . import _kernel

QUANTITIES = "ijdDS"


def neighbour_list(quantities, atoms, cutoff, self_interaction=False, *, max_memory_bytes=None):
    """Full neighbour list of an ``ase.Atoms``: same call and results as ase's (int64 indices
    and shifts; matscipy gives the same pairs with int32).

    quantities: letters from "ijdDS" (first atom, second atom, distance, distance vector, cell
        shift); one array is returned per letter, a bare array for a single letter.
    cutoff: a distance, a dict {(Z1, Z2): distance} (symbols or atomic numbers, pairs not listed
        are never neighbours) or one radius per atom (neighbours when the spheres overlap).
    self_interaction: also list every atom as its own neighbour (S = 0, d = 0).
    max_memory_bytes: refuse (MemoryError) when the output is estimated to need more; default:
        the memory currently available.
    """
    return primitive_neighbour_list(
        quantities, atoms.pbc, atoms.cell.array, atoms.positions, cutoff,
        numbers=atoms.numbers, self_interaction=self_interaction,
        max_memory_bytes=max_memory_bytes,
    )


def primitive_neighbour_list(quantities, pbc, cell, positions, cutoff, numbers=None,
                             self_interaction=False, *, max_memory_bytes=None):
    """Neighbour list from plain arrays, with the argument order of
    ``ase.neighborlist.primitive_neighbor_list``.

    pbc: periodicity along each cell vector (three booleans, or one for all).
    cell: 3x3, rows are lattice vectors; rows of non-periodic axes may be zero.
    positions: (n_atoms, 3) Cartesian coordinates, inside the cell or not.
    numbers: atomic numbers, needed only for a per-species-pair cutoff dict.
    Other arguments as in :func:`neighbour_list`.
    """
    _check_quantities(quantities)
    pbc = _as_pbc(pbc)
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {cell.shape}")
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {positions.shape}")
    if max_memory_bytes is not None and max_memory_bytes <= 0:
        raise ValueError(f"max_memory_bytes must be positive, got {max_memory_bytes}")

    max_cutoff, pair_cutoff = _cutoffs(cutoff, numbers, len(positions))

    def compute(letters):
        return _kernel.neighbour_list(letters, pbc, cell, positions, max_cutoff,
                                      self_interaction, max_memory_bytes or 0)

    if pair_cutoff is None:
        return _unpack(compute(quantities))
    # Species- or atom-dependent cutoffs: list pairs up to the largest one, then filter.
    letters = "".join(dict.fromkeys("ijd" + quantities))
    arrays = dict(zip(letters, compute(letters)))
    keep = arrays["d"] < pair_cutoff(arrays["i"], arrays["j"])
    return _unpack(tuple(arrays[letter][keep] for letter in quantities))


def set_buffer_cache_limit(max_bytes):
    """Keep at most `max_bytes` of freed result arrays for reuse by later calls (0: none); returns
    the previous limit. Writing into fresh memory pages costs more than finding the pairs, and
    neighbour lists are usually rebuilt at about the same size, so mlpot recycles the pages of
    results that have been garbage collected. Default: 1/8 of physical memory, at most 4 GiB.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be zero or positive, got {max_bytes}")
    previous = _kernel.buffer_cache_limit()
    _kernel.set_buffer_cache_limit(int(max_bytes))
    return previous


def _check_quantities(quantities):
    if not isinstance(quantities, str):
        raise ValueError(f"quantities must be a string of letters from {QUANTITIES!r}, "
                         f"got {quantities!r}")
    unknown = sorted(set(quantities) - set(QUANTITIES))
    if unknown:
        raise ValueError(f"unknown quantities {''.join(unknown)!r} in {quantities!r}; "
                         f"use letters from {QUANTITIES!r}")


def _as_pbc(pbc):
    flags = np.asarray(pbc, dtype=bool)
    if flags.shape == ():
        flags = np.full(3, flags)
    if flags.shape != (3,):
        raise ValueError(f"pbc must be one boolean or three, got shape {flags.shape}")
    return tuple(bool(flag) for flag in flags)


def _cutoffs(cutoff, numbers, n_atoms):
    """(largest cutoff, function of (i, j) giving each pair's cutoff, or None if uniform)."""
    if isinstance(cutoff, dict):
        if numbers is None:
            raise ValueError("a per-species cutoff dict needs the atomic numbers")
        numbers = np.asarray(numbers)
        if numbers.shape != (n_atoms,):
            raise ValueError(f"numbers must have shape ({n_atoms},), got {numbers.shape}")
        pairs = {(_atomic_number(a), _atomic_number(b)): float(c) for (a, b), c in cutoff.items()}
        size = max([0, *numbers, *(z for pair in pairs for z in pair)]) + 1
        table = np.zeros((size, size))
        for (a, b), c in pairs.items():
            table[a, b] = table[b, a] = c
        return max(pairs.values(), default=0.0), lambda i, j: table[numbers[i], numbers[j]]
    if np.ndim(cutoff) == 0:
        return float(cutoff), None
    radii = np.asarray(cutoff, dtype=np.float64)
    if radii.shape != (n_atoms,):
        raise ValueError(f"per-atom cutoff radii must have shape ({n_atoms},), got {radii.shape}")
    return 2 * float(radii.max(initial=0.0)), lambda i, j: radii[i] + radii[j]


def _atomic_number(species):
    return atomic_numbers[species] if isinstance(species, str) else int(species)


def _unpack(arrays):
    return arrays[0] if len(arrays) == 1 else tuple(arrays)
