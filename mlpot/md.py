"""``mlpot md``: a short molecular-dynamics run with a shipped (or any) potential.

It is what a new user runs first: Langevin equilibration, then NVE, and a report of what an MD
user checks before trusting a potential: temperature, energy conservation and the radial
distribution function (printed, and plotted to a PNG).
"""

import time
from pathlib import Path

import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet

from .calculator import MLPotCalculator
from .neighbours import neighbour_list


def radial_distribution(atoms, r_max: float, bins: int = 100):
    """g(r) averaged over all atoms (periodic or not), from the C++ neighbour list."""
    distances = neighbour_list("d", atoms, r_max)
    counts, edges = np.histogram(distances, bins=bins, range=(0.0, r_max))
    centres = 0.5 * (edges[1:] + edges[:-1])
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    density = len(atoms) / atoms.get_volume() if atoms.cell.rank == 3 else 1.0
    return centres, counts / (len(atoms) * shell * density)


def add_arguments(parser):
    parser.add_argument("potential", nargs="?", default="Si",
                        help="a shipped potential (Si, SiC) or a model file")
    parser.add_argument("--structure", help="start structure (any ASE-readable file); default: "
                        "the shipped potential's example structure")
    parser.add_argument("--repeat", type=int, default=3, help="supercell size of the example")
    parser.add_argument("--temperature", type=float, default=600.0, help="K")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs")
    parser.add_argument("--nvt-steps", type=int, default=200)
    parser.add_argument("--nve-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="mlpot-md", help="folder for the trajectory and plots")
    parser.add_argument("--no-progress", action="store_true")


def run(args):
    from ase.io import Trajectory, read
    from tqdm import tqdm

    from .potentials import example_structure, potential_path

    model = Path(args.potential) if Path(args.potential).is_file() else potential_path(args.potential)
    atoms = read(args.structure) if args.structure else example_structure(args.potential, args.repeat)
    atoms.calc = MLPotCalculator(str(model), skin=0.5)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"mlpot md: {atoms.get_chemical_formula()} ({len(atoms)} atoms) with {model}")

    rng = np.random.default_rng(args.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=rng)
    Stationary(atoms)
    phases = [("NVT", Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                               friction=0.01 / units.fs, fixcm=False, rng=rng), args.nvt_steps),
              ("NVE", VelocityVerlet(atoms, args.timestep * units.fs), args.nve_steps)]
    trajectory = Trajectory(str(out / "md.traj"), "w", atoms)
    nve_energy, temperatures = [], []
    start = time.perf_counter()
    for name, dynamics, steps in phases:
        bar = tqdm(total=steps, desc=name, unit="step", disable=args.no_progress)
        for _ in range(steps):
            dynamics.run(1)
            temperature = atoms.get_temperature()
            total = atoms.get_potential_energy() + atoms.get_kinetic_energy()
            if name == "NVE":
                nve_energy.append(total)
                temperatures.append(temperature)
            bar.set_postfix(T=f"{temperature:.0f} K", E=f"{total:.4f} eV")
            bar.update()
        bar.close()
        trajectory.write()
    elapsed = time.perf_counter() - start
    steps = args.nvt_steps + args.nve_steps

    report = [f"wall time per step      {1e3 * elapsed / max(steps, 1):.2f} ms"]
    if nve_energy:
        energy = np.array(nve_energy) / len(atoms)
        picoseconds = args.nve_steps * args.timestep / 1000.0
        drift = (energy[-1] - energy[0]) / picoseconds * 1000.0
        report += [f"NVE mean temperature    {np.mean(temperatures):.1f} K",
                   f"NVE energy drift        {drift:+.3f} meV/atom/ps",
                   f"NVE energy fluctuation  {1000 * energy.std():.3f} meV/atom"]
    r_max = 6.0 if atoms.cell.rank == 3 else 5.0
    r, g = radial_distribution(atoms, r_max)
    first_peak = r[np.argmax(g)]
    report.append(f"RDF first peak          {first_peak:.2f} Å")
    print("\n".join(report))
    _plot_rdf(r, g, out / "rdf.png", f"{atoms.get_chemical_formula()} at {args.temperature:g} K")
    print(f"trajectory: {out / 'md.traj'}, RDF plot: {out / 'rdf.png'}")


def _plot_rdf(r, g, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(r, g)
    axis.set_xlabel("r (Å)")
    axis.set_ylabel("g(r)")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
