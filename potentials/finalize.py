"""Ship a trained potential: copy the exported model and its training report into the folder,
and record the error on a fixed held-out slice for the regression test.

    python -m mlpot.potentials.finalize si [--run potentials/si/run]

The regression slice is the first ``SLICE`` structures of ``data/test.extxyz``; its MAE is
computed here with the shipped file through the ASE calculator, the same path the test takes
(``tests/test_potentials.py``), so a later change that makes the model or the code worse fails.
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from ase.io import read

from mlpot.calculator import MLPotCalculator

SLICE = 40
REPORT_FILES = ("metrics.md", "metrics.json", "parity_energy.png", "parity_forces.png",
                "parity_stress.png", "learning_curves.png", "config.yaml")


def slice_errors(model: Path, test_file: Path, count: int = SLICE) -> dict:
    """Energy (per atom) and force-component MAE of ``model`` on the first ``count`` structures."""
    calculator = MLPotCalculator(str(model))
    energy_errors, force_errors = [], []
    for atoms in read(test_file, f":{count}"):
        reference_energy = atoms.get_potential_energy()
        reference_forces = atoms.get_forces()
        atoms.calc = calculator
        energy_errors.append((atoms.get_potential_energy() - reference_energy) / len(atoms))
        force_errors.append((atoms.get_forces() - reference_forces).ravel())
    return {"structures": count,
            "energy_mae": float(np.mean(np.abs(energy_errors))),
            "forces_mae": float(np.mean(np.abs(np.concatenate(force_errors))))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="folder under potentials/, e.g. si")
    parser.add_argument("--run", help="training run folder (default: potentials/NAME/run)")
    args = parser.parse_args(argv)
    folder = Path(__file__).parent / args.name
    run = Path(args.run) if args.run else folder / "run"
    shutil.copy(run / "model.pt", folder / "model.pt")
    report = folder / "training"
    report.mkdir(exist_ok=True)
    for name in REPORT_FILES:
        if (run / name).exists():
            shutil.copy(run / name, report / name)
    errors = slice_errors(folder / "model.pt", folder / "data" / "test.extxyz")
    (folder / "regression.json").write_text(json.dumps(
        {"slice": f"data/test.extxyz[:{SLICE}]", "units": {"energy": "eV/atom", "forces": "eV/Å"},
         **errors}, indent=1) + "\n")
    print(f"shipped {folder / 'model.pt'}; regression slice {errors}")


if __name__ == "__main__":
    main()
