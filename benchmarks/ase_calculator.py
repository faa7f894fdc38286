"""Time per force call of the ASE calculator and the share spent outside the model.

For diamond-Si supercells of 64 … 8,000 atoms, each call moves the atoms (so nothing is cached),
then asks for forces and stress. "model" is the deployed model's forward + backward (the peer:
the part the calculator cannot speed up); "outside" is everything else: input checks, the C++
neighbour list, edge vectors, and the force/virial sums. Target: outside ≤ 10 % at 1k atoms.

    OMP_NUM_THREADS=1 python benchmarks/ase_calculator.py [--model FILE] [--max-atoms 8000]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

import mlpot  # noqa: E402
from mlpot.models import PaiNN  # noqa: E402
from mlpot.potentials import potential_path  # noqa: E402


class TimedModel:
    """Wraps a deployed model and accumulates the time spent in its forward + backward."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        result = self.model(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return result


def default_model(folder: str) -> str:
    try:
        return str(potential_path("Si"))
    except (FileNotFoundError, ValueError):
        torch.manual_seed(0)
        model = PaiNN(["Si"], cutoff=4.5, num_features=32, num_interactions=2)
        return str(mlpot.export_model(model, os.path.join(folder, "si.pt")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file (default: shipped Si, else a random PaiNN)")
    parser.add_argument("--max-atoms", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        path = args.model or default_model(folder)
        print(f"model: {path}  ({mlpot.read_metadata(path)['model_kind']}, 1 thread)")
        print(f"{'atoms':>6} {'edges':>8} {'ms/call':>9} {'model ms':>9} {'outside ms':>10} "
              f"{'outside %':>9}")
        for cells in (2, 3, 4, 5, 8, 10):
            atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (cells, cells, cells)
            if len(atoms) > args.max_atoms:
                break
            calc = mlpot.MLPotCalculator(path)
            calc.model = TimedModel(calc.model)
            atoms.calc = calc
            rng = np.random.default_rng(0)
            atoms.rattle(0.05, rng=rng)
            atoms.get_forces()  # warm-up (TorchScript profiling runs)
            atoms.get_forces()
            best_total, best_model = np.inf, np.inf
            for _ in range(args.repeats):
                atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
                calc.model.seconds = 0.0
                start = time.perf_counter()
                atoms.get_forces()
                atoms.get_stress()
                total = time.perf_counter() - start
                if total < best_total:
                    best_total, best_model = total, calc.model.seconds
            edges = len(mlpot.neighbour_list("i", atoms, calc.model.cutoff))
            outside = best_total - best_model
            print(f"{len(atoms):>6} {edges:>8} {1e3 * best_total:>9.2f} {1e3 * best_model:>9.2f} "
                  f"{1e3 * outside:>10.3f} {100 * outside / best_total:>8.2f}%")


if __name__ == "__main__":
    main()
