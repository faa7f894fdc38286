"""Training data: read labelled structures from files, convert units, check them, split them.

Labels are looked up by configurable key (``data.keys``) in ``atoms.info``, ``atoms.arrays``,
the attached calculator's results (where ase.io puts extxyz's energy/forces/stress) and, for ASE
databases, a row's key-value pairs and data. Everything is converted to eV, Å, eV/Å and eV/Å³
(ASE's stress sign: ``stress = −virial / volume``). Bad data fails here, naming file and structure.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .units import conversion_factors

#: atoms closer than this (Å) make a structure unusable
MIN_DISTANCE = 0.1


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and the structure."""


@dataclass
class Labelled:
    """One structure with its reference labels, in eV and Å."""

    numbers: np.ndarray            # [N] atomic numbers
    positions: np.ndarray          # [N, 3] Å
    cell: np.ndarray               # [3, 3] Å
    pbc: np.ndarray                # [3] bool
    energy: float                  # eV
    forces: Optional[np.ndarray]   # [N, 3] eV/Å or None
    stress: Optional[np.ndarray]   # [3, 3] eV/Å³ (ASE sign) or None
    source: str                    # "file.extxyz[12]" for messages

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell))) if self.pbc.all() else 0.0


@dataclass
class DataSet:
    structures: List[Labelled]
    files: List[Dict] = field(default_factory=list)  # provenance: path, bytes, sha256, structures


def file_record(path: Path) -> Dict:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "name": path.name, "bytes": path.stat().st_size,
            "sha256": digest.hexdigest()}


def _is_database(path: Path) -> bool:
    """ASE databases (SQLite ``.db``, JSON ``.json``), as ase.io decides from the suffix."""
    return path.suffix.lower() in (".db", ".json")


def _read_atoms(path: Path, index: str) -> list:
    import ase.io

    if _is_database(path):
        import ase.db
        from ase.io.formats import string2index

        with ase.db.connect(str(path), serial=True) as db:
            try:
                selection = string2index(index)
            except ValueError:
                selection = index  # an ASE db query
            if isinstance(selection, str):
                rows = list(db.select(selection))
            else:
                rows = list(db.select())
                rows = rows[selection] if isinstance(selection, slice) else [rows[selection]]
            return [row.toatoms(add_additional_information=True) for row in rows]
    try:
        images = ase.io.read(str(path), index=index)
    except StopIteration:
        return []
    except Exception as error:  # ase.io raises many kinds; say which file
        if path.stat().st_size == 0:
            return []
        raise DataError(f"cannot read {str(path)!r} with ase.io "
                        f"({type(error).__name__}: {error})") from error
    return images if isinstance(images, list) else [images]


def _lookup(atoms, key: Optional[str]):
    """The label ``key`` of ``atoms`` wherever ase put it, or None."""
    if key is None:
        return None
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    for extra in ("key_value_pairs", "data"):  # ASE database rows
        if isinstance(atoms.info.get(extra), dict) and key in atoms.info[extra]:
            return atoms.info[extra][key]
    return None


def _matrix(value, what: str, source: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 9:
        return array.reshape(3, 3)
    if array.size == 6:  # Voigt order xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = array
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise DataError(f"{source}: {what} has {array.size} components; expected 6 (Voigt) or 9")


def read_dataset(files: Sequence[str], config_data: Dict, need_forces: bool) -> DataSet:
    """Every structure of ``files`` with its labels in eV and Å, checked."""
    keys, units = config_data["keys"], config_data["units"]
    factors = conversion_factors(units)
    structures, records = [], []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"data file {str(path)!r} does not exist")
        images = _read_atoms(path, config_data["index"])
        if not images:
            raise DataError(f"{str(path)!r} holds no structures (empty file, or data.index "
                            f"{config_data['index']!r} selects none)")
        record = file_record(path)
        record["structures"] = len(images)
        records.append(record)
        for k, atoms in enumerate(images):
            structures.append(_labelled(atoms, f"{path.name}[{k}]", keys, factors, need_forces))
    return DataSet(structures, records)


def _labelled(atoms, source: str, keys: Dict, factors: Dict, need_forces: bool) -> Labelled:
    n = len(atoms)
    if n == 0:
        raise DataError(f"{source}: structure has no atoms")
    positions = np.asarray(atoms.positions, dtype=np.float64) * factors["length"]
    cell = np.asarray(atoms.cell.array, dtype=np.float64) * factors["length"]
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not np.all(np.isfinite(positions)) or not np.all(np.isfinite(cell)):
        raise DataError(f"{source}: positions or cell contain NaN or inf")
    if pbc.any() and abs(np.linalg.det(cell)) < 1e-9:
        raise DataError(f"{source}: periodic structure with a zero-volume cell")

    energy = _lookup(atoms, keys.get("energy"))
    if energy is None:
        raise DataError(
            f"{source}: no energy (looked for key {keys.get('energy')!r} in info, arrays and "
            "calculator results); set data.keys.energy to the key your file uses")
    try:
        energy = float(np.asarray(energy, dtype=np.float64).reshape(())) * factors["energy"]
    except (TypeError, ValueError) as error:
        raise DataError(f"{source}: energy {energy!r} is not a number") from error
    if not np.isfinite(energy):
        raise DataError(f"{source}: energy is NaN or inf")

    forces = _lookup(atoms, keys.get("forces"))
    if forces is None and need_forces:
        raise DataError(
            f"{source}: no force array (looked for key {keys.get('forces')!r} in arrays, info and "
            "calculator results); set data.keys.forces to the key your file uses, or "
            "training.loss.forces to 0 to train on energies only")
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (n, 3):
            raise DataError(f"{source}: forces have shape {forces.shape}; expected ({n}, 3)")
        if not np.all(np.isfinite(forces)):
            bad = np.flatnonzero(~np.isfinite(forces).all(axis=1))
            raise DataError(f"{source}: forces contain NaN or inf (atoms {bad[:10].tolist()})")
        forces = forces * factors["forces"]

    stress = None
    raw = _lookup(atoms, keys.get("stress"))
    if raw is not None:
        stress = _matrix(raw, "stress", source) * factors["stress"]
    else:
        raw = _lookup(atoms, keys.get("virial"))
        if raw is not None:
            if not pbc.all():
                raise DataError(f"{source}: a virial is given but the structure is not periodic "
                                "in all three directions, so it has no volume")
            stress = -_matrix(raw, "virial", source) * factors["energy"] / abs(np.linalg.det(cell))
    if stress is not None:
        if not np.all(np.isfinite(stress)):
            raise DataError(f"{source}: stress/virial contains NaN or inf")
        if not pbc.all():
            stress = None  # a stress needs a volume: unusable for non-periodic structures
    return Labelled(np.asarray(atoms.numbers, dtype=np.int64), positions, cell, pbc, energy,
                    forces, stress, source)


def species_of(structures: Sequence[Labelled]) -> List[str]:
    """The elements present, ordered by atomic number."""
    from ase.data import chemical_symbols

    numbers = sorted({int(z) for s in structures for z in np.unique(s.numbers)})
    return [chemical_symbols[z] for z in numbers]


def check_species(structures: Sequence[Labelled], species: Sequence[str]) -> None:
    from ase.data import chemical_symbols

    allowed = set(species)
    for s in structures:
        present = {chemical_symbols[int(z)] for z in np.unique(s.numbers)}
        unknown = sorted(present - allowed)
        if unknown:
            raise DataError(
                f"{s.source}: element(s) {', '.join(unknown)} not in the model's species "
                f"{list(species)}; add them to model.species (or leave model.species out to take "
                "the elements of the training data)")


def split_indices(n: int, validation: float, test: float, seed: int):
    """(train, validation, test) index arrays; fractions < 1 or counts ≥ 1, drawn by ``seed``."""
    def count(value):
        return int(round(value * n)) if value < 1 else int(value)

    n_val, n_test = count(validation), count(test)
    if n_val + n_test >= n:
        raise DataError(f"the split asks for {n_val} validation and {n_test} test structures out "
                        f"of {n}: nothing would be left to train on; lower data.split")
    order = np.random.default_rng(seed).permutation(n)
    return (np.sort(order[n_val + n_test:]), np.sort(order[:n_val]),
            np.sort(order[n_val:n_val + n_test]))


def fit_reference_energies(structures: Sequence[Labelled], species: Sequence[str],
                           fixed: Optional[Dict[str, float]] = None) -> np.ndarray:
    """Per-species energies ε (eV) minimising Σ_s (E_s − Σ_z n_sz ε_z)², by least squares.

    Species in ``fixed`` keep their given value; species absent from the data get 0 (or their
    fixed value).
    """
    from ase.data import atomic_numbers

    fixed = dict(fixed or {})
    z_index = {atomic_numbers[s]: k for k, s in enumerate(species)}
    counts = np.zeros((len(structures), len(species)))
    energies = np.array([s.energy for s in structures])
    for row, s in enumerate(structures):
        for z, c in zip(*np.unique(s.numbers, return_counts=True)):
            counts[row, z_index[int(z)]] = c
    result = np.zeros(len(species))
    free = [k for k, s in enumerate(species) if s not in fixed and counts[:, k].any()]
    for k, s in enumerate(species):
        if s in fixed:
            result[k] = fixed[s]
    residual = energies - counts @ result
    if free:
        solution, *_ = np.linalg.lstsq(counts[:, free], residual, rcond=None)
        result[free] = solution
    return result


def force_rms(structures: Sequence[Labelled]) -> Optional[float]:
    values = [s.forces.reshape(-1) for s in structures if s.forces is not None]
    if not values:
        return None
    return float(np.sqrt(np.mean(np.concatenate(values) ** 2)))


def energy_std(structures: Sequence[Labelled], species: Sequence[str], shift: np.ndarray) -> float:
    """Standard deviation of the per-atom energy left after the reference energies."""
    from ase.data import atomic_numbers

    index = {atomic_numbers[s]: k for k, s in enumerate(species)}
    residual = [(s.energy - sum(shift[index[int(z)]] for z in s.numbers)) / len(s.numbers)
                for s in structures]
    return float(np.std(residual)) if len(residual) > 1 else 0.0
