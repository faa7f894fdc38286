"""ASE front end: Atoms → C++ neighbour list → deployed model → energy, forces, stress.

Forces, virial and per-atom virial come from the model's ∂E/∂(edge vector) with the same sums as
in the LAMMPS plugin (``mlpot.edge_sums``; the plugin's C++ copy is tested equal to 1e-10), so the
two front ends differ only in how they find the edges.

With a committee (a committee file, or several model files) energy, forces and stress are the
committee mean, and ``calc.results`` adds the uncertainty (docs/committee.md): ``energy_std``,
``energies_std``, ``forces_std`` and ``max/min/avg_force_deviation``, the force deviations from
per-member forces built with the same edge sums. ``DeviationHarvester`` is an ASE dynamics observer
that appends the frames where the committee disagrees to an extended-XYZ file, as
``pair_style mlpot ... deviation_harvest`` does in LAMMPS.
"""

from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from . import edge_sums
from .model_file import DeployedModel, load_model
from .neighbours import primitive_neighbour_list

#: Atoms closer than this (Å) are reported as overlapping instead of being evaluated.
MIN_DISTANCE = 0.25


class MLPotCalculator(Calculator):
    """ASE calculator for an mlpot model file (or an already loaded ``DeployedModel``).

    ``skin`` > 0 builds the neighbour list with ``cutoff + skin`` and reuses it until an atom has
    moved more than ``skin / 2`` (as LAMMPS does); ``skin = 0`` rebuilds it at every call.

    ``model`` may also be a committee: a committee file, or a list of model files evaluated as
    one (``mlpot.load_committee``). ``calibrated``: scale the force deviations by the committee's
    conformal calibration when it has one (``results["uncertainty_calibrated"]`` says whether).
    ``calibration``, for a list of files only (a committee file carries its own): their scale, a
    number or the committee file that ``mlpot calibrate`` made of these files.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies", "stresses"]
    #: extra results of a committee (read them from ``calc.results`` or ``calc.get_property``)
    uncertainty_properties = ["energy_std", "energies_std", "forces_std", "max_force_deviation",
                              "min_force_deviation", "avg_force_deviation", "member_energies",
                              "member_forces", "uncertainty_calibrated", "uncertainty_scale"]

    def __init__(self, model: Union[str, Path, DeployedModel, Sequence[Union[str, Path]]],
                 device: str = "cpu", dtype: Optional[str] = None, skin: float = 0.0,
                 calibrated: bool = True, calibration: Union[None, float, Dict, str, Path] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if calibration is not None and not isinstance(model, (list, tuple)):
            raise ValueError("calibration is for several model files run as one committee; a "
                             "committee file carries its own (use calibrated=True/False)")
        if isinstance(model, DeployedModel):
            if dtype is not None or str(device) != "cpu":
                raise ValueError("pass device/dtype to mlpot.load(), not with an already loaded model")
            self.model = model
        elif isinstance(model, (list, tuple)):
            from .models.committee import load_committee

            self.model = load_committee(model, device=device, dtype=dtype, calibration=calibration)
        else:
            self.model = load_model(model, device=device, dtype=dtype)
        self.committee = "committee" in self.model.metadata
        self.calibrated, self.uncertainty_scale = False, 1.0
        if self.committee:
            from .models.committee import calibration_scale

            self.implemented_properties = (type(self).implemented_properties
                                           + self.uncertainty_properties)
            scale = calibration_scale(self.model.metadata)
            self.calibrated = bool(calibrated) and scale is not None
            self.uncertainty_scale = scale if self.calibrated else 1.0
        if skin < 0 or not np.isfinite(skin):
            raise ValueError(f"skin must be a finite non-negative distance in Å, got {skin}")
        self.skin = float(skin)
        self._species_index = {symbol: k for k, symbol in enumerate(self.model.species)}
        self._species_cache = (None, None)
        self._pairs = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if len(atoms) == 0:
            raise ValueError("the Atoms object is empty: there is nothing to compute")
        positions = np.asarray(atoms.positions, dtype=np.float64)
        if not np.all(np.isfinite(positions)):
            bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
            raise ValueError(f"atom positions contain NaN or inf (atoms {bad[:10].tolist()}); "
                             "check the structure or the MD time step")
        species = self._species(atoms.numbers)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        i, j, vectors = self._edges(atoms, positions, cell)

        device, dtype = self.model.device, self.model.dtype
        edge_index = torch.from_numpy(np.stack([i, j])).to(device)
        output = self.model(species, edge_index, torch.from_numpy(vectors).to(device, dtype),
                            len(atoms))
        gradient = output["edge_gradient"].detach().to("cpu", torch.float64).numpy()
        energy = float(output["energy"].detach())
        if not (np.isfinite(energy) and np.isfinite(gradient).all()):
            raise ValueError(
                "the model returned a non-finite (NaN or inf) energy or force: the structure is "
                "far outside what the model was trained on (atoms crashing together: check the "
                "structure and the MD time step), or the model file's weights are damaged "
                "(re-export it)")
        self.results["energy"] = self.results["free_energy"] = energy
        self.results["energies"] = output["atom_energies"].detach().to("cpu", torch.float64).numpy()
        self.results["forces"] = edge_sums.forces(i, j, gradient, len(atoms))
        if self.committee:
            self._uncertainty(output, i, j, len(atoms))

        volume = abs(np.linalg.det(cell))
        if volume > 1e-12:
            virial = edge_sums.virial(vectors, gradient)
            self.results["stress"] = full_3x3_to_voigt_6_stress(-virial / volume)
            if "stresses" in properties:
                atom_virial = edge_sums.atom_virial(i, j, vectors, gradient, len(atoms))
                self.results["stresses"] = full_3x3_to_voigt_6_stress(-atom_virial / volume)
        elif "stress" in properties or "stresses" in properties:
            raise PropertyNotImplementedError(
                "stress needs a cell with non-zero volume; set atoms.cell (and pbc) first")

    def _uncertainty(self, output, i: np.ndarray, j: np.ndarray, n_atoms: int) -> None:
        """Committee spread: every member's forces from its own edge gradient with the same
        sums as the mean's; deviations are population standard deviations over the M members."""
        to_numpy = lambda key: output[key].detach().to("cpu", torch.float64).numpy()  # noqa: E731
        member_energies = to_numpy("member_energies")
        member_forces = np.stack([edge_sums.forces(i, j, g, n_atoms)
                                  for g in to_numpy("member_edge_gradients")])
        deviation = member_forces - member_forces.mean(axis=0)
        # DeePMD's model deviation: sqrt(mean_k |F_ik − mean_k F_ik|²) per atom i
        forces_std = np.sqrt((deviation * deviation).sum(axis=2).mean(axis=0))
        forces_std = forces_std * self.uncertainty_scale
        self.results["member_energies"] = member_energies
        self.results["member_forces"] = member_forces
        self.results["energy_std"] = float(member_energies.std())
        self.results["energies_std"] = to_numpy("member_atom_energies").std(axis=0)
        self.results["forces_std"] = forces_std
        self.results["max_force_deviation"] = float(forces_std.max())
        self.results["min_force_deviation"] = float(forces_std.min())
        self.results["avg_force_deviation"] = float(forces_std.mean())
        self.results["uncertainty_calibrated"] = self.calibrated
        self.results["uncertainty_scale"] = float(self.uncertainty_scale)

    def _species(self, numbers: np.ndarray) -> torch.Tensor:
        """Species indices of the model, cached while the atomic numbers stay the same."""
        cached_numbers, cached = self._species_cache
        if cached_numbers is not None and np.array_equal(cached_numbers, numbers):
            return cached
        from ase.data import chemical_symbols

        unknown = sorted({chemical_symbols[z] for z in numbers} - set(self._species_index))
        if unknown:
            raise ValueError(
                f"element(s) {', '.join(unknown)} not in this model's species "
                f"{self.model.species}; use a model trained for them")
        index = np.array([self._species_index[chemical_symbols[z]] for z in numbers])
        species = torch.from_numpy(index).to(self.model.device)
        self._species_cache = (numbers.copy(), species)
        return species

    def _edges(self, atoms, positions: np.ndarray, cell: np.ndarray):
        """Directed edges (i, j) and their vectors, from a reused or fresh neighbour list."""
        pbc = np.array(atoms.pbc, dtype=bool)
        cutoff = self.model.cutoff
        if not self._pairs_still_valid(positions, cell, pbc):
            i, j, shifts = primitive_neighbour_list("ijS", pbc, cell, positions, cutoff + self.skin)
            self._pairs = (positions.copy(), cell.copy(), pbc, i, j, shifts @ cell)
        _, _, _, i, j, shift_vectors = self._pairs
        vectors = positions[j] - positions[i] + shift_vectors
        if self.skin > 0:
            inside = np.einsum("ek,ek->e", vectors, vectors) < cutoff * cutoff
            i, j, vectors = i[inside], j[inside], vectors[inside]
        if len(i):
            shortest = int(np.argmin(np.einsum("ek,ek->e", vectors, vectors)))
            distance = float(np.linalg.norm(vectors[shortest]))
            if distance < MIN_DISTANCE:
                raise ValueError(
                    f"atoms {i[shortest]} and {j[shortest]} are {distance:.3g} Å apart "
                    f"(< {MIN_DISTANCE} Å): overlapping atoms; fix the structure")
        return i, j, vectors

    def _pairs_still_valid(self, positions, cell, pbc) -> bool:
        if self._pairs is None or self.skin == 0:
            return False
        old_positions, old_cell, old_pbc, *_ = self._pairs
        if old_positions.shape != positions.shape or not np.array_equal(old_pbc, pbc):
            return False
        if not np.array_equal(old_cell, cell):
            return False
        moved = np.einsum("ak,ak->a", positions - old_positions, positions - old_positions)
        return float(moved.max()) < (0.5 * self.skin) ** 2


# ------------------------------------------------------------------------------ harvesting frames

#: The per-atom columns of a harvested frame (extended XYZ), as pair_style mlpot writes them.
HARVEST_PROPERTIES = ("species:S:1:pos:R:3:committee_forces:R:3:forces_std:R:1:"
                      "energies_std:R:1")


def harvest_frame(atoms, results: Dict, step: int) -> str:
    """One extended-XYZ frame of ``atoms`` with a committee's ``results`` (eV, Å): the text that
    ``pair_style mlpot ... deviation_harvest`` writes, number for number (``%.17g``). The mean is
    stored as ``committee_energy``/``committee_forces``, not ``energy``/``forces``, so that
    ``ase.io.read`` does not take the model's guess for labels."""
    cell = " ".join(f"{v:.17g}" for v in np.asarray(atoms.cell.array, dtype=float).ravel())
    pbc = " ".join("T" if p else "F" for p in atoms.pbc)
    lines = [str(len(atoms)),
             f'Lattice="{cell}" Properties={HARVEST_PROPERTIES} step={int(step)} '
             f'committee_energy={results["energy"]:.17g} energy_std={results["energy_std"]:.17g} '
             f'max_force_deviation={results["max_force_deviation"]:.17g} '
             f'uncertainty_scale={results["uncertainty_scale"]:.17g} pbc="{pbc}"']
    columns = np.column_stack([atoms.positions, results["forces"], results["forces_std"],
                               results["energies_std"]])
    for symbol, row in zip(atoms.get_chemical_symbols(), columns):
        lines.append(f"{symbol:<2}" + "".join(f" {v:24.17g}" for v in row))
    return "\n".join(lines) + "\n"


class DeviationHarvester:
    """ASE dynamics observer: appends the frame to an extended-XYZ file (``ase.io.read(path,
    index=":")``) when the committee's max force deviation exceeds ``threshold`` (eV/Å), with
    the same content as ``pair_style mlpot deviation_warn X deviation_harvest FILE``::

        harvester = DeviationHarvester(atoms, "harvest.extxyz", threshold=0.3, dynamics=dyn)
        dyn.attach(harvester, interval=10)      # as LAMMPS' deviation_every 10
        dyn.run(1000)
        harvester.steps                         # the steps written

    ``atoms.calc`` must be a committee ``MLPotCalculator``; the file is truncated on creation.
    The step is ``dynamics.nsteps``, or the number of earlier calls without ``dynamics``.
    """

    def __init__(self, atoms, filename: Union[str, Path], threshold: float, dynamics=None):
        if not getattr(atoms.calc, "committee", False):
            raise ValueError("DeviationHarvester needs atoms.calc to be a committee "
                             "MLPotCalculator (a committee file or several model files)")
        if not (threshold > 0 and np.isfinite(threshold)):
            raise ValueError(f"threshold must be a positive force deviation in eV/Å, got "
                             f"{threshold}")
        self.atoms, self.path, self.threshold = atoms, Path(filename), float(threshold)
        self.dynamics, self.calls, self.steps = dynamics, 0, []
        try:
            self.path.write_text("")
        except OSError as error:
            raise OSError(f"cannot write the harvest file {str(self.path)!r}: {error}") from error

    def __call__(self) -> bool:
        """Write the current frame if it is above the threshold; True if it was written."""
        step = self.dynamics.nsteps if self.dynamics is not None else self.calls
        self.calls += 1
        self.atoms.get_forces()  # the committee results of these positions (cached after MD)
        results = self.atoms.calc.results
        if results["max_force_deviation"] <= self.threshold:
            return False
        with self.path.open("a") as stream:
            stream.write(harvest_frame(self.atoms, results, step))
        self.steps.append(step)
        return True
