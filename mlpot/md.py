"""``mlpot md``: a short molecular-dynamics run with a shipped (or any) potential.

It is what a new user runs first: Langevin equilibration, then NVE, and a report of what an MD
user checks before trusting a potential: temperature, energy conservation and the radial
distribution function (printed, and plotted to a PNG).
"""

import time
from pathlib import Path
from typing import Optional

import numpy as np
from ase import units
from ase.md import velocitydistribution
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet

from .calculator import MLPotCalculator
from .neighbours import neighbour_list


def thermalise(atoms, temperature_K: float, rng) -> None:
    """Maxwell–Boltzmann momenta at temperature_K. ASE 3.29 renamed MaxwellBoltzmannDistribution
    to thermalize_momenta and deprecates the old name; mlpot supports ASE from 3.23 on."""
    thermalize = getattr(velocitydistribution, "thermalize_momenta",
                         velocitydistribution.MaxwellBoltzmannDistribution)
    thermalize(atoms, temperature_K=temperature_K, rng=rng)


def is_bulk(atoms) -> bool:
    """Periodic in all three directions: the only case with a bulk density to normalise g(r)."""
    return bool(atoms.pbc.all()) and atoms.cell.rank == 3


def radial_distribution(atoms, r_max: float, bins: int = 100):
    """g(r) averaged over all atoms, from the C++ neighbour list.

    A molecule or cluster (not periodic in 3D) has no bulk density to normalise by: it gets the
    pair density around an atom, g(r)·ρ in Å⁻³ (``is_bulk`` tells which), whose peaks are at the
    same distances.
    """
    distances = neighbour_list("d", atoms, r_max)
    counts, edges = np.histogram(distances, bins=bins, range=(0.0, r_max))
    centres = 0.5 * (edges[1:] + edges[:-1])
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    density = len(atoms) / atoms.get_volume() if is_bulk(atoms) else 1.0
    return centres, counts / (len(atoms) * shell * density)


def add_arguments(parser):
    from .cli import bounded
    from .potentials import SHIPPED

    parser.add_argument("potential", nargs="?", default=next(iter(SHIPPED)),
                        help=f"a shipped potential ({', '.join(SHIPPED)}) or a model file")
    parser.add_argument("--structure", help="start structure (any ASE-readable file; the last "
                        "frame); default: the example structure of the shipped potential with "
                        "the model's species")
    parser.add_argument("--repeat", type=bounded(int, 1), default=3,
                        help="supercell size of the example")
    parser.add_argument("--temperature", type=bounded(float, 0), default=600.0, help="K")
    parser.add_argument("--timestep", type=bounded(float, 0, strict=True), default=1.0,
                        help="fs")
    parser.add_argument("--nvt-steps", type=bounded(int, 0), default=200)
    parser.add_argument("--nve-steps", type=bounded(int, 0), default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="mlpot-md", help="folder for the trajectory and plots")
    parser.add_argument("--no-progress", action="store_true")


def start_structure(model: Path, structure: Optional[str], repeat: int):
    """The structure to run: ``structure`` (a file), else the example structure of the shipped
    potential whose species are the model's (a model file of Si gets the Si crystal)."""
    from .cli import read_structures
    from .model_file import read_metadata
    from .potentials import available, example_structure

    species = read_metadata(model)["species"]  # first: a broken model file is named as such
    if structure:
        return read_structures(structure, "start structure (--structure)", index=-1)
    for name, path in available().items():
        if set(read_metadata(path)["species"]) == set(species):
            return example_structure(name, repeat)
    raise ValueError(f"no example structure for the species {' '.join(species)} of {str(model)!r}"
                     f" (the shipped examples are for {', '.join(available())}); give a start "
                     "structure with --structure FILE")


def run(args):
    from ase.io import Trajectory
    from tqdm import tqdm

    from .cli import model_file, output_folder
    from .validate import first_peak

    model = model_file(args.potential)
    atoms = start_structure(model, args.structure, args.repeat)
    atoms.calc = MLPotCalculator(str(model), skin=0.5)
    out = output_folder(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"mlpot md: {atoms.get_chemical_formula()} ({len(atoms)} atoms) with {model}")

    rng = np.random.default_rng(args.seed)
    thermalise(atoms, args.temperature, rng)
    Stationary(atoms)
    phases = [("NVT", Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                               friction=0.01 / units.fs, fixcm=False, rng=rng), args.nvt_steps),
              ("NVE", VelocityVerlet(atoms, args.timestep * units.fs), args.nve_steps)]
    trajectory = Trajectory(str(out / "md.traj"), "w", atoms)
    nve = []  # (temperature, total energy) samples, dt apart
    start = time.perf_counter()
    for name, dynamics, steps in phases:
        bar = tqdm(total=steps, desc=name, unit="step", disable=args.no_progress)
        if name == "NVE" and steps:  # its start too: n steps give n + 1 samples over n·dt
            nve.append(_state(atoms))
        for _ in range(steps):
            dynamics.run(1)
            temperature, total = _state(atoms)
            if name == "NVE":
                nve.append((temperature, total))
            bar.set_postfix(T=f"{temperature:.0f} K", E=f"{total:.4f} eV")
            bar.update()
        bar.close()
        trajectory.write()
    elapsed = time.perf_counter() - start
    steps = args.nvt_steps + args.nve_steps

    report = [f"wall time per step      {1e3 * elapsed / max(steps, 1):.2f} ms"]
    if nve:
        temperatures, energy = np.array(nve).T
        energy /= len(atoms)
        report += [f"NVE mean temperature    {np.mean(temperatures):.1f} K",
                   f"NVE energy drift        {energy_drift(energy, args.timestep):+.3f} "
                   "meV/atom/ps",
                   f"NVE energy fluctuation  {1000 * energy.std():.3f} meV/atom"]
    bulk = is_bulk(atoms)
    r, g = radial_distribution(atoms, 6.0 if bulk else 5.0)
    peak = r[first_peak(g) if bulk else np.argmax(g)]  # first_peak needs g → 1 at large r
    report.append(f"RDF first peak          {peak:.2f} Å" + (
        "" if bulk else " (not periodic: pair density, g(r) unnormalised)"))
    print("\n".join(report))
    _plot_rdf(r, g, out / "rdf.png", f"{atoms.get_chemical_formula()} at {args.temperature:g} K",
              "g(r)" if bulk else "pair density g(r)·ρ (Å⁻³), unnormalised")
    print(f"trajectory: {out / 'md.traj'}, RDF plot: {out / 'rdf.png'}")


def energy_drift(energy, timestep: float) -> float:
    """Drift (meV/atom/ps) from the end points of per-atom energies (eV) sampled ``timestep``
    fs apart: n samples span (n − 1) time steps."""
    return (energy[-1] - energy[0]) / ((len(energy) - 1) * timestep / 1000.0) * 1000.0


def _state(atoms):
    """Temperature (K) and total energy (eV)."""
    return atoms.get_temperature(), atoms.get_potential_energy() + atoms.get_kinetic_energy()


def _plot_rdf(r, g, path, title, ylabel):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(r, g)
    axis.set_xlabel("r (Å)")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
