"""Speed of mlpot's symmetry-function kernel next to dscribe's ACSF and TorchANI's AEVComputer.

µs per atom on diamond Si (64 … 262k atoms, capped by --max-atoms), one thread, for two sets:

* "Behler 24": 8 G2 (r_s = 0) + 16 G4 (2 η × ζ ∈ {1, 2, 4, 16} × λ = ±1), cosine cutoff 6 Å
  (46 neighbours, 1035 neighbour pairs per atom);
* "ANI-like 48": TorchANI's 16 radial terms (η = 16, shifts 0.9 … 5.2 Å) + a 32-function G4 grid
  with a 4.6 Å angular cutoff (28 neighbours, 378 pairs per atom), next to TorchANI with 16
  radial + 4 × 8 angular terms and the same cutoffs (ANI's angular terms are not G4, see
  mlpot.symmetry_functions; same cutoffs, neighbours and feature count).

Columns: mlpot descriptors only ("G"); descriptors + ∂G/∂r_e stored for every edge ("G+dG",
what training uses); descriptors, then the fused chain rule ``gradient`` (dE/dG → edge gradient,
∂G/∂r recomputed and contracted, never stored: "G+chain", what the deployed model runs per call,
timed with dE/dG = 1);
dscribe ACSF forward (its own neighbour search included; it has one cutoff, so the ANI-like set
uses 5.2 Å for its angular part: the same 28 neighbours in diamond Si) and with numerical
derivatives (small systems only); TorchANI forward and forward + backward (float32, its default,
and float64) from a precomputed neighbour list, like mlpot's kernel. Neighbour lists are not
timed (mlpot's is printed for scale). Times are CPU seconds of this (single-threaded) process,
best of --repeats runs: on a quiet machine they equal wall time, on a shared one they are less
disturbed by other jobs. Every code is measured --rounds times in turn (mlpot, dscribe,
TorchANI, mlpot, …) and keeps its best, so that a drift of the machine's speed over minutes does
not favour whichever code ran in the faster minute (dscribe's numerical derivatives: first round
only). Small systems are repeated until half a second has been spent (at most 200 runs), for
every code alike. Above 4096 atoms dscribe runs once a round; mlpot runs --repeats times
at every size, its later calls reusing the first one's derivative memory as training does batch
after batch (the first touch of gigabytes of fresh memory measures the operating system: 0.4
GB/s in one VM, 87 µs per atom for the first call at 262144 atoms, 17 µs for the third).

    python benchmarks/symmetry_functions.py                  # 64 … 32768 atoms
    python benchmarks/symmetry_functions.py --max-atoms 262144 --torchani-max-atoms 8192
    python benchmarks/symmetry_functions.py --min-atoms 262144 --max-atoms 262144 \
        --dscribe-max-atoms 262144                           # the largest size alone
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse  # noqa: E402
import gc  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

from mlpot.neighbours import neighbour_list  # noqa: E402
from mlpot.symmetry_functions import SymmetryFunctionSet  # noqa: E402

torch.set_num_threads(1)

SIZES = [64, 512, 4096, 32768, 262144]  # 8 n³ atoms


def behler_24() -> SymmetryFunctionSet:
    radial = tuple((eta, 0.0) for eta in (0.001, 0.01, 0.03, 0.06, 0.15, 0.3, 0.6, 1.5))
    angular = tuple(("G4", eta, zeta, lam) for eta in (0.001, 0.01) for zeta in (1, 2, 4, 16)
                    for lam in (1, -1))
    return SymmetryFunctionSet(("Si",), 6.0, radial, angular)


def ani_like_48() -> SymmetryFunctionSet:
    return SymmetryFunctionSet.ani_like(["Si"], cutoff=5.2, angular_cutoff=4.6,
                                        angular_etas=(0.005, 0.02, 0.05, 0.1))


def torchani_computer(dtype):
    from torchani.aev import AEVComputer
    from torchani.aev._terms import ANIAngular, ANIRadial

    radial = ANIRadial(16.0, [0.9 + k * (5.2 - 0.9) / 16 for k in range(16)], 5.2)
    angular = ANIAngular(8.0, 32.0, [0.9 + k * (4.6 - 0.9) / 4 for k in range(4)],
                         [np.pi * (k + 0.5) / 8 for k in range(8)], 4.6)
    return AEVComputer(radial=radial, angular=angular, num_species=1).to(dtype)


def best(function, repeats, min_seconds=0.5, max_repeats=200):
    """Best of at least `repeats` runs, and of more (up to max_repeats) until min_seconds have
    been spent: small systems run in a millisecond, and their first runs are slower. The garbage
    collector is off while timing, as in timeit (a collection before each run walks every Python
    object and leaves the caches cold for the millisecond that follows)."""
    times = []
    gc.collect()
    gc.disable()
    try:
        while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_repeats):
            start = time.process_time()
            result = function()
            times.append(time.process_time() - start)
            del result
    finally:
        gc.enable()
    return min(times)


def silicon(n_atoms):
    cells = round((n_atoms / 8) ** (1 / 3))
    return bulk("Si", "diamond", a=5.431, cubic=True).repeat((cells, cells, cells))


def run_mlpot(sf, atoms, repeats):
    start = time.process_time()
    i, j, D = neighbour_list("ijD", atoms, sf.cutoff)
    nl = time.process_time() - start
    z = np.zeros(len(atoms), dtype=np.int64)
    edge_index = np.stack([i, j]).astype(np.int64)
    out = {"edges/atom": len(i) / len(atoms), "neighbour list": nl}
    out["G"] = best(lambda: sf.compute(z, edge_index, D, derivatives=False), repeats)
    out["G+dG"] = best(lambda: sf.compute(z, edge_index, D, derivatives=True), repeats)
    weights = np.ones((len(atoms), sf.num_features))
    out["G then gradient"] = out["G"] + best(lambda: sf.gradient(z, edge_index, D, weights),
                                             repeats)
    return out


def run_dscribe(sf, atoms, repeats, derivatives):
    from dscribe.descriptors import ACSF

    angular = [list(a[1:]) for a in sf.angular]
    acsf = ACSF(r_cut=sf.cutoff, g2_params=[list(r) for r in sf.radial], g4_params=angular,
                species=list(sf.species), periodic=True)
    out = {"forward": best(lambda: acsf.create(atoms, n_jobs=1), repeats)}
    if derivatives:
        out["forward+derivatives"] = best(
            lambda: acsf.derivatives(atoms, method="numerical", attach=True, n_jobs=1), 1)
    return out


def run_torchani(atoms, repeats):
    from torchani.neighbors import Neighbors

    i, j, D = neighbour_list("ijD", atoms, 5.2)
    half = i < j  # one entry per pair (no atom sees its own image at these sizes)
    out = {}
    for dtype, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
        computer = torchani_computer(dtype)
        index = torch.from_numpy(np.stack([i[half], j[half]]))
        vectors = torch.from_numpy(D[half]).to(dtype)
        elements = torch.zeros(1, len(atoms), dtype=torch.long)
        coordinates = torch.from_numpy(atoms.positions).to(dtype).unsqueeze(0)

        def forward(grad=False):
            v = vectors.clone().requires_grad_(grad)
            aev = computer.compute_from_neighbors(
                elements, coordinates, Neighbors(index, v.norm(dim=1), v))
            if grad:
                aev.sum().backward()
            return aev

        with torch.no_grad():
            out[f"forward {tag}"] = best(forward, repeats)
        out[f"forward+backward {tag}"] = best(lambda: forward(True), repeats)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-atoms", type=int, default=0)
    parser.add_argument("--max-atoms", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2,
                        help="measure every code this many times in turn, keeping each one's best "
                             "(a shared machine's speed drifts over minutes)")
    parser.add_argument("--dscribe-max-atoms", type=int, default=32768)
    parser.add_argument("--dscribe-derivatives-max-atoms", type=int, default=64)
    parser.add_argument("--torchani-max-atoms", type=int, default=8192)
    parser.add_argument("--no-dscribe", action="store_true")
    parser.add_argument("--no-torchani", action="store_true")
    args = parser.parse_args()

    try:
        import dscribe  # noqa: F401
    except ImportError:
        args.no_dscribe = True
        print("dscribe not installed: skipped (pip install dscribe)")
    try:
        import torchani  # noqa: F401
    except ImportError:
        args.no_torchani = True
        print("torchani not installed: skipped (pip install --no-deps torchani)")

    sets = {"Behler 24": behler_24(), "ANI-like 48": ani_like_48()}
    rows = []
    for name, sf in sets.items():
        for size in [s for s in SIZES if args.min_atoms <= s <= args.max_atoms]:
            atoms = silicon(size)
            n = len(atoms)
            us = lambda seconds: seconds / n * 1e6  # noqa: E731
            row = {"set": name, "atoms": n}
            keep = lambda key, seconds: row.update(  # noqa: E731
                {key: min(row.get(key, float("inf")), us(seconds))})
            for round_ in range(args.rounds):
                ours = run_mlpot(sf, atoms, args.repeats)
                row["edges/atom"] = ours["edges/atom"]
                for key, source in (("NL", "neighbour list"), ("G", "G"), ("G+dG", "G+dG"),
                                    ("G+chain", "G then gradient")):
                    keep(key, ours[source])
                if not args.no_dscribe and n <= args.dscribe_max_atoms:
                    ds = run_dscribe(sf, atoms, 1 if n > 4096 else args.repeats,
                                     round_ == 0 and n <= args.dscribe_derivatives_max_atoms)
                    keep("dscribe fwd", ds["forward"])
                    if "forward+derivatives" in ds:
                        keep("dscribe fwd+num.deriv", ds["forward+derivatives"])
                if (name.startswith("ANI") and not args.no_torchani
                        and n <= args.torchani_max_atoms):
                    for key, value in run_torchani(atoms, args.repeats).items():
                        keep(f"ANI {key}", value)
            rows.append(row)
            print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()},
                  flush=True)

    columns = ["set", "atoms", "edges/atom", "NL", "G", "G+dG", "G+chain", "dscribe fwd",
               "dscribe fwd+num.deriv", "ANI forward f32", "ANI forward+backward f32",
               "ANI forward+backward f64"]
    ratios = [("dscribe fwd", "G+dG"), ("dscribe fwd", "G+chain"),
              ("ANI forward+backward f32", "G+dG"), ("ANI forward+backward f32", "G+chain")]
    print("\nµs per atom, one thread (NL: mlpot neighbour list, not included elsewhere)\n")
    print("| " + " | ".join(columns + [f"{a} ÷ {b}" for a, b in ratios]) + " |")
    print("|" + "---|" * (len(columns) + len(ratios)))
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append("–" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v)))
        for a, b in ratios:
            cells.append("–" if row.get(a) is None else f"{row[a] / row[b]:.1f}×")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
