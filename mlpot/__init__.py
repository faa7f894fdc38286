"""mlpot: machine-learned interatomic potentials from training to production MD in ASE and LAMMPS."""

from ._version import __version__
from .calculator import MLPotCalculator
from .model_file import ModelFileError, export_model, load_model, read_metadata
from .neighbours import neighbour_list, primitive_neighbour_list

load = load_model
export = export_model

__all__ = [
    "__version__", "MLPotCalculator", "ModelFileError", "export", "export_model", "load",
    "load_model", "read_metadata", "neighbour_list", "primitive_neighbour_list",
]
