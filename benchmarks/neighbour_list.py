"""Neighbour-list speed: mlpot against vesin, matscipy and ase, single thread.

Full lists with quantities "ijSdD" and a 5 Å cutoff on diamond Si (cubic cell, orthorhombic) and
fcc Cu (primitive cell, triclinic) supercells of 64 to 262,144 atoms. Each time is the best of
several runs; the table gives nanoseconds per listed pair and mlpot's speedup over vesin.

Times are CPU time of the calling thread by default (every library here runs in that one
thread), which other processes on a shared machine disturb far less than wall time; page faults
count, as they are kernel time spent by the thread. Use --clock wall for wall time. vesin keeps
one NeighborList per system, as intended for repeated calls (it reuses its internal buffers);
mlpot reuses the pages of freed results (mlpot.neighbours.set_buffer_cache_limit), so best-of
timings measure repeated calls, not a first call, which pays page faults.

    python benchmarks/neighbour_list.py [--max-atoms N] [--ase-max-atoms N] [--clock wall]
"""

import os

# Single thread for every library; must be set before numpy/torch are imported.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse  # noqa: E402
import gc  # noqa: E402
import time  # noqa: E402

import ase.neighborlist  # noqa: E402
import matscipy.neighbours  # noqa: E402
import numpy as np  # noqa: E402
import vesin  # noqa: E402
from ase.build import bulk  # noqa: E402

from mlpot.neighbours import neighbour_list  # noqa: E402

CUTOFF = 5.0
QUANTITIES = "ijSdD"


def systems(max_atoms):
    """(name, atoms) for Si and Cu supercells of 64 ... 262,144 atoms."""
    si = bulk("Si", "diamond", a=5.43, cubic=True)  # 8 atoms
    cu = bulk("Cu", "fcc", a=3.615)  # 1 atom, triclinic primitive cell
    for name, unit, repeats in (("Si diamond", si, (2, 4, 8, 16, 32)),
                                ("Cu fcc (triclinic)", cu, (4, 8, 16, 32, 64))):
        for n in repeats:
            if len(unit) * n**3 <= max_atoms:
                yield name, unit.repeat(n)


def libraries():
    vesin_list = vesin.NeighborList(cutoff=CUTOFF, full_list=True)
    return {
        "mlpot": lambda atoms: neighbour_list(QUANTITIES, atoms, CUTOFF),
        "vesin": lambda atoms: vesin_list.compute(atoms.positions, atoms.cell.array, True,
                                                  QUANTITIES),
        "matscipy": lambda atoms: matscipy.neighbours.neighbour_list(QUANTITIES, atoms, CUTOFF),
        "ase": lambda atoms: ase.neighborlist.neighbor_list(QUANTITIES, atoms, CUTOFF),
    }


def best_time(function, atoms, repeats, clock, min_seconds=0.3):
    """Best time over `repeats` runs, or more for fast calls until `min_seconds` have been spent
    (at most 1000 runs); also the number of pairs found. The garbage collector is off while
    timing, as in timeit."""
    best, spent, runs = np.inf, 0.0, 0
    gc.collect()
    gc.disable()
    try:
        while runs < repeats or (spent < min_seconds and runs < 1000):
            start = clock()
            result = function(atoms)
            elapsed = clock() - start
            best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
            n_pairs = len(result[0])
            del result
    finally:
        gc.enable()
    return best, n_pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-atoms", type=int, default=262_144)
    parser.add_argument("--ase-max-atoms", type=int, default=32_768,
                        help="skip ase above this size (it takes minutes)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="best of at least this many runs (more for fast calls)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="CPU time of this thread (default) or wall time")
    args = parser.parse_args()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    names = list(libraries())
    header = (f"{'system':<20}{'N':>8}{'pairs':>11}"
              + "".join(f"{name + ' ns/pair':>18}" for name in names) + f"{'vesin/mlpot':>13}")
    print(f"cutoff {CUTOFF} Å, quantities {QUANTITIES!r}, full list, single thread, "
          f"{args.clock} time, best of >= {args.repeats} runs and 0.3 s "
          "(3 runs above 32,768 atoms)")
    print(header)
    print("-" * len(header))
    for system, atoms in systems(args.max_atoms):
        times, pairs = {}, {}
        for name, function in libraries().items():
            if name == "ase" and len(atoms) > args.ase_max_atoms:
                continue
            repeats = args.repeats if len(atoms) <= 32_768 else min(args.repeats, 3)
            times[name], pairs[name] = best_time(function, atoms, repeats, clock)
        if len(set(pairs.values())) != 1:
            raise RuntimeError(f"{system}, {len(atoms)} atoms: pair counts differ: {pairs}")
        n_pairs = pairs["mlpot"]
        cells = "".join(
            f"{times[name] / n_pairs * 1e9:>18.2f}" if name in times else f"{'skipped':>18}"
            for name in names
        )
        print(f"{system:<20}{len(atoms):>8}{n_pairs:>11}{cells}"
              f"{times['vesin'] / times['mlpot']:>12.2f}x", flush=True)
    if args.max_atoms > args.ase_max_atoms:
        print(f"ase skipped above {args.ase_max_atoms} atoms (too slow; --ase-max-atoms)")


if __name__ == "__main__":
    main()
