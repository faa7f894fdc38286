"""Writing reference data sets the same way for every shipped potential: seeded splits + provenance."""

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
