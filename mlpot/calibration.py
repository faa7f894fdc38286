"""Conformal calibration of a committee's force deviation: ``mlpot calibrate``.

The committee's per-atom force deviation σ_i = sqrt(mean_k |F_ik − F̄_i|²) (the calculator's raw
``forces_std``) ranks atoms by how uncertain they are, but says nothing about the size of the
error. Split-conformal calibration finds one scale s on a held-out calibration set such that the
per-atom force error |F_i^ref − F̄_i| (Euclidean norm, eV/Å) lies below s·σ_i for a chosen
fraction (``coverage``) of atoms:

    scores  r_i = |F_i^ref − F̄_i| / σ_i       for the n atoms of the calibration set
    s       = the ⌈(n + 1)·coverage⌉-th smallest score (the finite-sample correction)

If calibration atoms and new atoms are exchangeable, P(|ΔF| ≤ s·σ) ≥ coverage for a new atom.
Atoms of one structure are correlated, so with few structures the realised coverage scatters
more than the binomial spread of n independent atoms; use many small structures, and always check
the coverage on a separate test set (``--test``). The scale is stored in the model file's
``committee.calibration`` record (``mlpot.model_file.update_metadata``), and both front ends
multiply the force deviations by it. Several member files are merged into one calibrated file,
which also lists their names (``metadata.committee_of_files``), so that the files themselves can
take its scale (``pair_style mlpot calibration FILE``, ``load_committee(files, calibration=FILE)``).
See docs/committee.md.
"""

import datetime
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

#: what the scale calibrates: the per-atom norm of the force error against the per-atom deviation
QUANTITY = "force_norm_per_atom"
METHOD = "split conformal, rank ceil((n + 1) * coverage)"


def read_structures(paths: Sequence[Union[str, Path]], index: str = ":",
                    forces_key: str = "forces") -> Tuple[List, List[np.ndarray], List[Dict]]:
    """Structures with reference forces (eV/Å) from files ase.io reads, and file records."""
    from .cli import read_structures as read_file
    from .train.data import _lookup, file_record

    structures, forces, records = [], [], []
    for name in paths:
        path = Path(name)
        images = read_file(path, "data file", index)
        images = images if isinstance(images, list) else [images]
        for k, atoms in enumerate(images):
            value = _lookup(atoms, forces_key)
            if value is None:
                raise ValueError(f"{path.name}[{k}]: no reference forces (looked for "
                                 f"{forces_key!r}); give the key with --forces-key")
            value = np.asarray(value, dtype=np.float64)
            if value.shape != (len(atoms), 3) or not np.all(np.isfinite(value)):
                raise ValueError(f"{path.name}[{k}]: reference forces must be a finite "
                                 f"({len(atoms)}, 3) array, got shape {value.shape}")
            structures.append(atoms)
            forces.append(value)
        record = file_record(path)
        records.append({"name": record["name"], "sha256": record["sha256"],
                        "structures": len(images)})
    return structures, forces, records


def errors_and_deviations(calculator, structures: Sequence, forces: Sequence[np.ndarray]
                          ) -> Tuple[np.ndarray, np.ndarray]:
    """Per-atom force error norms |F_ref − F̄| and raw force deviations σ over all structures.

    ``calculator``: an ``MLPotCalculator`` of a committee, made with ``calibrated=False``.
    """
    if not getattr(calculator, "committee", False):
        raise ValueError("calibration needs a committee (a committee file or several files)")
    if calculator.uncertainty_scale != 1.0:
        raise ValueError("calibrate against raw deviations: use MLPotCalculator(..., "
                         "calibrated=False)")
    errors, deviations = [], []
    for atoms, reference in zip(structures, forces):
        atoms = atoms.copy()
        atoms.calc = calculator
        predicted = atoms.get_forces()
        errors.append(np.linalg.norm(reference - predicted, axis=1))
        deviations.append(np.array(calculator.results["forces_std"]))
    return np.concatenate(errors), np.concatenate(deviations)


def scores(errors: np.ndarray, deviations: np.ndarray) -> np.ndarray:
    """Nonconformity scores |ΔF| / σ (0 where both vanish, inf where only σ does)."""
    errors, deviations = np.asarray(errors, float), np.asarray(deviations, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = errors / deviations
    ratio[(deviations == 0) & (errors == 0)] = 0.0
    ratio[(deviations == 0) & (errors > 0)] = np.inf
    return ratio


def conformal_scale(errors: np.ndarray, deviations: np.ndarray, coverage: float
                    ) -> Tuple[float, int]:
    """The split-conformal scale s and its rank k = ⌈(n + 1)·coverage⌉ among the n scores."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1 (e.g. 0.9), got {coverage}")
    values = np.sort(scores(errors, deviations))
    n = len(values)
    rank = math.ceil((n + 1) * coverage - 1e-9)
    if rank > n:
        raise ValueError(f"{n} calibration atoms are too few for coverage {coverage}: the "
                         f"finite-sample quantile needs n ≥ {math.ceil(coverage / (1 - coverage))}"
                         " atoms; add calibration structures or lower the coverage")
    scale = float(values[rank - 1])
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"the calibration scale is {scale}: the members agree exactly (zero "
                         "deviation) on too many atoms with errors; a committee of identical "
                         "members cannot be calibrated")
    return scale, rank


def coverage_of(errors: np.ndarray, deviations: np.ndarray, scale: float) -> float:
    """Fraction of atoms whose force error is within ``scale`` × deviation."""
    return float(np.mean(np.asarray(errors) <= scale * np.asarray(deviations)))


def calibrate(model: Union[str, Path, Sequence[Union[str, Path]]], data: Sequence[str],
              output: Union[str, Path], coverage: float = 0.9, test: Sequence[str] = (),
              index: str = ":", forces_key: str = "forces") -> Dict:
    """Fit the conformal scale of ``model`` (a committee file, or several member files that are
    merged into one committee file) on ``data``, write ``output`` with it in the record's
    ``committee.calibration`` and return that record (with the ``test`` coverage if given)."""
    from .calculator import MLPotCalculator
    from .model_file import export_model, read_metadata, update_metadata
    from .models.committee import committee_from_files

    paths = [model] if isinstance(model, (str, Path)) else list(model)
    output = Path(output)
    if len(paths) == 1:
        record = read_metadata(paths[0])
        if "committee" not in record:
            raise ValueError(f"{str(paths[0])!r} is a single model, not a committee: calibrate a "
                             "committee file, or give the member files together")
        source = paths[0]
    else:
        first = read_metadata(paths[0])
        merged = committee_from_files(paths)
        metadata = dict(first.get("metadata", {}))
        metadata["committee_of_files"] = [Path(p).name for p in paths]
        source = export_model(merged, output, metadata=metadata, dtype=first["dtype"])
        record = read_metadata(source)

    calculator = MLPotCalculator(str(source), calibrated=False)
    structures, forces, files = read_structures(data, index, forces_key)
    errors, deviations = errors_and_deviations(calculator, structures, forces)
    scale, rank = conformal_scale(errors, deviations, coverage)
    calibration = {
        "scale": scale,
        "coverage": float(coverage),
        "n": int(len(errors)),
        "structures": len(structures),
        "quantity": QUANTITY,
        "method": METHOD,
        "rank": int(rank),
        "data": files,
        "calibration_set_coverage": coverage_of(errors, deviations, scale),
        "raw_coverage": coverage_of(errors, deviations, 1.0),
        "calibrated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if test:
        test_structures, test_forces, test_files = read_structures(test, index, forces_key)
        test_errors, test_deviations = errors_and_deviations(calculator, test_structures,
                                                             test_forces)
        calibration["test"] = {"n": int(len(test_errors)), "structures": len(test_structures),
                               "coverage": coverage_of(test_errors, test_deviations, scale),
                               "raw_coverage": coverage_of(test_errors, test_deviations, 1.0),
                               "data": test_files}
    committee = dict(record["committee"])
    committee["calibration"] = calibration
    update_metadata(source, output, {"committee": committee})
    return calibration


def add_arguments(parser) -> None:
    from .cli import bounded

    parser.add_argument("model", nargs="+",
                        help="a committee file, or several member model files (merged into one "
                             "committee file)")
    parser.add_argument("--data", nargs="+", required=True,
                        help="held-out calibration structures with reference forces (eV/Å), "
                             "not used in training")
    parser.add_argument("--coverage", type=bounded(float, 0, 1, strict=True), default=0.9,
                        help="fraction of atoms whose force error the calibrated deviation must "
                             "bound (default 0.9)")
    parser.add_argument("--output", required=True, help="calibrated committee file to write "
                        "(may be the input file)")
    parser.add_argument("--test", nargs="*", default=[],
                        help="separate test structures on which to report the coverage")
    parser.add_argument("--index", default=":", help="ase.io index applied to every data file")
    parser.add_argument("--forces-key", default="forces",
                        help="name of the reference forces in the files (default: forces)")


def run(args) -> Dict:
    calibration = calibrate(args.model, args.data, args.output, coverage=args.coverage,
                            test=args.test, index=args.index, forces_key=args.forces_key)
    print(f"wrote {args.output}")
    print(f"  force-deviation scale  {calibration['scale']:.4g}  (coverage {args.coverage:g} of "
          f"|ΔF| per atom, {calibration['n']} atoms in {calibration['structures']} structures)")
    print(f"  calibration coverage   {calibration['calibration_set_coverage']:.3f} "
          f"(uncalibrated {calibration['raw_coverage']:.3f})")
    if "test" in calibration:
        test = calibration["test"]
        print(f"  test coverage          {test['coverage']:.3f} (uncalibrated "
              f"{test['raw_coverage']:.3f}; {test['n']} atoms in {test['structures']} structures)")
    if len(args.model) > 1:
        print(f"  the member files themselves take this scale with `pair_style mlpot calibration "
              f"{args.output}` (LAMMPS) or MLPotCalculator(files, calibration={args.output!r})")
    return calibration
