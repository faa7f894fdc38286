"""Active learning with a committee: run MD where the training data does not reach, harvest the
frames where the members disagree, label them with the reference, retrain, and check.

    python examples/active_learning/active_learning.py            # ~3 min on one core
    python examples/active_learning/active_learning.py --quick    # under a minute (CI)

The reference is the SiC potential's: Tersoff SiC via LAMMPS, labelled with the functions of
potentials/sic/make_data.py. Steps (everything goes to --out, default ./run):

1. 300 K MD frames of 64-atom 3C-SiC, labelled: the small training set; more 300 K frames
   for a check set.
2. `mlpot train` a committee of 4 small PaiNNs (round 0).
3. The threshold: the largest max force deviation σ the committee shows on the 300 K check set,
   times a margin, so that nothing like the training data is harvested.
4. LAMMPS MD at 1200 K with the committee (`pair_style mlpot deviation_warn X deviation_harvest
   FILE`), from a 300 K frame, twice with other velocities: the harvest of run A is labelled and
   added to the training set, that of run B is the held-out "harvested region".
5. `mlpot train` the same committee on the 300 K frames + the labelled harvest (round 1).
6. Both committees on the held-out harvested frames (energy and force MAE, max σ) and on the
   300 K check set, and run A's MD again with round 1's committee: how many steps are above
   the threshold now. A table (results.md, printed) and a figure (active_learning.png).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
import yaml
from ase import Atoms
from ase.build import bulk

from mlpot import cli
from mlpot import lammps as mlammps
from mlpot.calculator import MLPotCalculator
from mlpot.potentials.sic.make_data import REFERENCE, TersoffLabeller

SPECIES = ["Si", "C"]
COLD, HOT = 300, 1200  # K: the training conditions, and where the MD goes
MARGIN = 1.5           # threshold = MARGIN x the largest max σ on the 300 K check set

#: sizes of the full run and of --quick (a CI check that the loop works and helps)
SETTINGS = {
    "full": {"train_frames": 32, "check_frames": 16, "members": 4, "epochs": 60,
             "md_steps": 1000, "deviation_every": 40},
    "quick": {"train_frames": 12, "check_frames": 6, "members": 4, "epochs": 10,
              "md_steps": 160, "deviation_every": 20},
}

MODEL = {"kind": "painn", "species": SPECIES,
         "hyperparameters": {"cutoff": 4.0, "num_features": 16, "num_interactions": 1,
                             "num_radial": 8}}


def crystal() -> Atoms:
    """64-atom 3C-SiC, as in potentials/sic/make_data.py."""
    return bulk("SiC", "zincblende", a=4.32, cubic=True) * (2, 2, 2)


def tersoff_md(labeller: TersoffLabeller, temperature: float, frames: int, seed: int):
    """Labelled frames 50 fs apart from Tersoff NVT MD (make_data.py's sampling)."""
    return labeller.sample_md(crystal(), temperature, steps=50 * frames, every=50, seed=seed)


def train(directory: Path, data: list, settings: dict) -> Path:
    """`mlpot train` a committee on the extxyz files ``data``; returns the committee file."""
    config = {
        "model": MODEL,
        "data": {"train": [str(path) for path in data],
                 "split": {"validation": 0.1, "test": 0, "seed": 0},
                 "reference_method": REFERENCE},
        "training": {"epochs": settings["epochs"], "batch_size": 4, "dtype": "float32",
                     "loss": {"energy": 100.0, "forces": 10.0},
                     "optimizer": {"name": "adam", "lr": 5.0e-3},
                     "scheduler": {"name": "cosine", "min_lr": 1.0e-4}, "ema_decay": 0.9,
                     "num_threads": 1,
                     "committee": {"members": settings["members"], "bootstrap": True}},
        "output": {"directory": str(directory), "plots": False, "progress": False},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    if cli.main(["train", str(path)]) != 0:
        raise RuntimeError(f"training failed; see {directory / 'train.log'}")
    return directory / "model.pt"


def explore(model: Path, start: Atoms, directory: Path, name: str, threshold: float, seed: int,
            settings: dict):
    """LAMMPS NVT MD at HOT with the committee from ``start``: the deviation file's rows and the
    harvested frames."""
    directory.mkdir(parents=True, exist_ok=True)
    data = mlammps.write_data(directory / "start.data", start, SPECIES)
    deviations, harvest = directory / f"{name}_devi.out", directory / f"{name}_harvest.extxyz"
    lmp = mlammps.lammps()
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        atom_modify map array
        newton on
        read_data {data}
        pair_style mlpot threads 1 deviation_file {deviations} &
                   deviation_every {settings['deviation_every']} &
                   deviation_warn {threshold} deviation_harvest {harvest}
        pair_coeff * * {model} Si C
        neighbor 1.0 bin
        velocity all create {HOT} {seed} mom yes rot yes dist gaussian
        fix nvt all nvt temp {HOT} {HOT} 0.1
        timestep 0.001
        run {settings['md_steps']}
    """)
    lmp.close()
    table = np.loadtxt(deviations, ndmin=2)  # step max min avg devi_e
    return ase.io.read(harvest, index=":", format="extxyz"), table


def label(labeller: TersoffLabeller, frames: list, config_type: str) -> list:
    """Reference energy, forces and stress of harvested frames (the committee's values dropped)."""
    labelled = []
    for frame in frames:
        atoms = labeller.label(Atoms(frame.symbols, frame.positions, cell=frame.cell,
                                     pbc=frame.pbc))
        atoms.info.update(config_type=config_type, step=frame.info["step"])
        labelled.append(atoms)
    return labelled


def errors(model: Path, frames: list) -> dict:
    """Energy MAE (meV/atom), force MAE (meV/Å) and the mean max σ (eV/Å) of the committee."""
    calculator = MLPotCalculator(str(model))
    energy, force, sigma = [], [], []
    for reference in frames:
        atoms = reference.copy()
        atoms.calc = calculator
        force.append(np.abs(atoms.get_forces() - reference.get_forces()).ravel())
        energy.append(abs(atoms.get_potential_energy() - reference.get_potential_energy())
                      / len(atoms))
        sigma.append(calculator.results["max_force_deviation"])
    return {"energy_mae": 1e3 * float(np.mean(energy)),
            "force_mae": 1e3 * float(np.mean(np.concatenate(force))),
            "max_sigma": float(np.mean(sigma)), "frames": len(frames)}


def table(results: dict) -> str:
    rows = [("held-out harvested frames (1200 K MD)", "heldout"),
            ("300 K check set (training conditions)", "cold")]
    lines = ["| set | committee | energy MAE (meV/atom) | force MAE (meV/Å) | mean max σ (eV/Å) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for title, key in rows:
        for round_ in ("round 0", "round 1"):
            r = results[round_][key]
            lines.append(f"| {title} ({r['frames']}) | {round_} | {r['energy_mae']:.2f} | "
                         f"{r['force_mae']:.0f} | {r['max_sigma']:.3f} |")
    md = results["md"]
    lines += ["", f"Threshold X = {results['threshold']:.3f} eV/Å ({MARGIN} × the largest max σ "
              "of round 0 on the 300 K check set).",
              "", "| 1200 K MD, run A's velocities | steps looked at | above X "
              "| mean max σ (eV/Å) |", "| --- | ---: | ---: | ---: |"]
    for round_ in ("round 0", "round 1"):
        r = md[round_]
        lines.append(f"| {round_} | {r['checked']} | {r['above']} | {r['mean_max_sigma']:.3f} |")
    return "\n".join(lines)


def plot(path: Path, results: dict, runs: dict, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for round_, colour in (("round 0", "tab:red"), ("round 1", "tab:blue")):
        left.plot(runs[round_][:, 0], runs[round_][:, 1], "o-", ms=3, color=colour,
                  label=f"{round_} committee")
    left.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.2f} eV/Å")
    left.set_ylim(bottom=0)
    left.set(xlabel="MD step (1 fs) at 1200 K, from a 300 K frame",
             ylabel="max force deviation σ (eV/Å)",
             title="1200 K MD driven by each committee (run A's start)")
    left.legend(fontsize=8)
    names = ["energy MAE\n(meV/atom)", "force MAE\n(100 meV/Å)", "mean max σ\n(eV/Å)"]
    values = {r: [results[r]["heldout"]["energy_mae"], results[r]["heldout"]["force_mae"] / 100,
                  results[r]["heldout"]["max_sigma"]] for r in ("round 0", "round 1")}
    x = np.arange(len(names))
    right.bar(x - 0.2, values["round 0"], 0.4, color="tab:red", label="round 0 (300 K data)")
    right.bar(x + 0.2, values["round 1"], 0.4, color="tab:blue",
              label="round 1 (+ harvested frames)")
    right.set_xticks(x, names)
    right.set(title="held-out harvested frames (Tersoff labels)")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast run (CI)")
    parser.add_argument("--out", default="run", help="output folder (default ./run)")
    args = parser.parse_args(argv)
    settings = SETTINGS["quick" if args.quick else "full"]
    torch.set_num_threads(1)
    out = Path(args.out).resolve()
    (out / "data").mkdir(parents=True, exist_ok=True)
    began = time.time()

    def step(message):
        print(f"[{time.time() - began:6.1f} s] {message}", flush=True)

    labeller = TersoffLabeller()
    step(f"1. Tersoff MD at {COLD} K: training and check frames")
    cold = out / "data" / "cold.extxyz"
    ase.io.write(cold, tersoff_md(labeller, COLD, settings["train_frames"], seed=1))
    check = tersoff_md(labeller, COLD, settings["check_frames"], seed=2)

    step("2. training the round-0 committee")
    round0 = train(out / "round0", [cold], settings)

    step("3. threshold from the 300 K check set")
    calculator = MLPotCalculator(str(round0))
    in_domain = []
    for atoms in check:
        atoms = atoms.copy()
        atoms.calc = calculator
        atoms.get_forces()
        in_domain.append(calculator.results["max_force_deviation"])
    threshold = MARGIN * max(in_domain)

    step(f"4. LAMMPS MD at {HOT} K with the round-0 committee, harvesting above "
         f"{threshold:.3f} eV/Å")
    start = check[-1].copy()  # a 300 K frame: the MD heats a crystal that the committee knows
    start.wrap()
    harvest_a, run_a = explore(round0, start, out / "md", "round0_A", threshold, 11, settings)
    harvest_b, _ = explore(round0, start, out / "md", "round0_B", threshold, 12, settings)
    if not harvest_a or not harvest_b:
        raise RuntimeError("nothing was harvested: the committee trusts itself at 1200 K")
    new = out / "data" / "harvested.extxyz"
    ase.io.write(new, label(labeller, harvest_a, f"harvested {HOT} K"))
    heldout = label(labeller, harvest_b, f"held-out {HOT} K")
    ase.io.write(out / "data" / "heldout.extxyz", heldout)
    step(f"   harvested {len(harvest_a)} frames (run A, now labelled for training) and "
         f"{len(harvest_b)} (run B, held out)")

    step("5. training the round-1 committee on the 300 K frames + the harvest")
    round1 = train(out / "round1", [cold, new], settings)

    step("6. checking both committees")
    _, run_a1 = explore(round1, start, out / "md", "round1_A", threshold, 11, settings)
    results = {"threshold": threshold, "settings": settings, "md": {}}
    for name, model, run in (("round 0", round0, run_a), ("round 1", round1, run_a1)):
        results[name] = {"heldout": errors(model, heldout), "cold": errors(model, check)}
        results["md"][name] = {"checked": len(run), "above": int(np.sum(run[:, 1] > threshold)),
                               "mean_max_sigma": float(run[:, 1].mean())}
    text = table(results)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(out / "active_learning.png", results, {"round 0": run_a, "round 1": run_a1}, threshold)
    step(f"done: {out / 'results.md'}, {out / 'active_learning.png'}\n\n{text}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
