"""The deployed model file: the one contract that the ASE calculator and ``pair_style mlpot`` obey.

Only this module knows the file format (specified in ``docs/model_format.md``). A file is a
TorchScript archive whose ``forward`` returns the energy of the local atoms, per-atom energies and
the gradient of the energy with respect to every edge vector, plus a JSON metadata record stored
as an extra file of the archive, readable without running (or even loading) the model, from
Python and from C++ alike.
"""

import copy
import datetime
import json
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Union

import torch

from ._version import __version__

if TYPE_CHECKING:  # model kinds register deployed interfaces here: import them only lazily
    from .models.base import AtomicEnergyModel

FORMAT_NAME = "mlpot-model"
FORMAT_VERSION = 1
METADATA_RECORD = "mlpot_metadata.json"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
ARTIFACT = "torchscript"


class ModelFileError(ValueError):
    """A model file that cannot be used: missing, corrupt, not mlpot's, or of an unknown version."""


class EdgeGradientModel(torch.nn.Module):
    """Wraps a model kind into the deployed contract: energy, atom energies and ∂E/∂(edge vectors).

    The gradient is taken inside the (scripted) module, so the C++ side needs no autograd calls;
    callers must leave gradient mode on (no ``torch.no_grad()`` / ``NoGradGuard``).
    Training uses the same module with ``create_graph=True`` to differentiate through forces.
    """

    def __init__(self, model: "AtomicEnergyModel", create_graph: bool = False):
        super().__init__()
        self.model = model
        self.create_graph = create_graph

    def forward(self, positions: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
                edge_vectors: torch.Tensor, n_local: int) -> Dict[str, torch.Tensor]:
        if not edge_vectors.requires_grad:
            edge_vectors = edge_vectors.detach().requires_grad_(True)
        atom_energies = self.model(species, edge_index, edge_vectors)[:n_local]
        energy = atom_energies.sum()
        gradient = torch.autograd.grad(
            [energy], [edge_vectors], create_graph=self.create_graph, allow_unused=True
        )[0]
        if gradient is None:  # no edges reach a local atom
            gradient = torch.zeros_like(edge_vectors)
        return {"energy": energy, "atom_energies": atom_energies, "edge_gradient": gradient}


def export_model(model: "AtomicEnergyModel", path: Union[str, Path], metadata: Optional[Dict] = None,
                 dtype: str = "float64") -> Path:
    """Write ``model`` as a self-describing deployable file; ``metadata`` is free-form provenance."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    deployable = copy.deepcopy(model).to(DTYPES[dtype]).eval()
    for parameter in deployable.parameters():
        parameter.requires_grad_(False)
    scripted = torch.jit.script(deployable.deployable_module())
    record = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "artifact": ARTIFACT,
        "interface": model.interface,
        "model_kind": model.kind,
        "species": list(model.species),
        "cutoff": model.cutoff,
        "num_interactions": model.num_interactions,
        "interaction_range": model.interaction_range,
        "dtype": dtype,
        "units": {"energy": "eV", "length": "Å"},
        "outputs": ["energy", "forces", "virial", "atom_energies", "atom_virial"],
        "mlpot_version": __version__,
        "torch_version": torch.__version__,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hyperparameters": model.hyperparameters(),
        **model.deployment_metadata(),
        "metadata": dict(metadata or {}),
    }
    path = Path(path)
    torch.jit.save(scripted, str(path), _extra_files={METADATA_RECORD: json.dumps(record, indent=1)})
    return path


def read_metadata(path: Union[str, Path]) -> Dict:
    """The metadata record of a model file, checked, without loading the model."""
    from . import models  # noqa: F401  (registers every model kind's deployed interface)

    path = Path(path)
    if not path.is_file():
        from .potentials import SHIPPED

        hint = (f", or use the shipped potential: mlpot.load_potential({str(path)!r})"
                if str(path).lower() in {name.lower() for name in SHIPPED} else "")
        raise ModelFileError(f"model file {str(path)!r} does not exist; check the path{hint}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{str(path)!r} is not a TorchScript archive (truncated, corrupted, or not a model "
            "file); re-export it with `mlpot export`"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/extra/" + METADATA_RECORD)]
            if not names:
                raise ModelFileError(
                    f"{str(path)!r} is a torch archive but not an mlpot model (it has no "
                    f"{METADATA_RECORD} record); export models, and training checkpoints, with "
                    "`mlpot export`"
                )
            record = json.loads(archive.read(names[0]))
            damaged = archive.testzip()  # torch does not check the CRCs of what it loads
            if damaged is not None:
                raise ModelFileError(
                    f"{str(path)!r} is corrupted (checksum mismatch in {damaged}); re-export it "
                    "with `mlpot export` or download it again")
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError, EOFError) as error:
        raise ModelFileError(
            f"{str(path)!r} is corrupted ({error}); re-export it with `mlpot export`"
        ) from error
    check_metadata(record, str(path))
    return record


def check_metadata(record: Dict, origin: str) -> None:
    """Refuse records that this mlpot cannot honour, saying what to do instead."""
    if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{origin!r} is not an mlpot model file")
    version = record.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{origin!r} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{origin!r} uses model format version {version}, but this mlpot ({__version__}) reads "
            f"up to version {FORMAT_VERSION}; upgrade mlpot (pip install -U mlpot)"
        )
    if record.get("artifact") != ARTIFACT:
        raise ModelFileError(
            f"{origin!r} holds a {record.get('artifact')!r} artifact; this mlpot loads "
            f"{ARTIFACT!r} only; upgrade mlpot"
        )
    if record.get("interface") not in _INTERFACES:
        raise ModelFileError(
            f"{origin!r} needs the model interface {record.get('interface')!r}, unknown to this "
            f"mlpot ({__version__}, knows {sorted(_INTERFACES)}); upgrade mlpot"
        )
    if "committee" in record:
        committee = record["committee"]
        if not (isinstance(committee, dict) and isinstance(committee.get("members"), int)
                and committee["members"] >= 2):
            raise ModelFileError(f"{origin!r} has an invalid committee entry {committee!r} (a "
                                 "committee needs at least 2 members); re-export it")
        if record["interface"] not in _COMMITTEE_INTERFACES:
            raise ModelFileError(
                f"{origin!r} is a committee of the {record['interface']!r} interface, which this "
                f"mlpot ({__version__}) cannot run as a committee; upgrade mlpot")
        calibration = committee.get("calibration")
        if calibration is not None and not (
                isinstance(calibration, dict) and isinstance(calibration.get("scale"), (int, float))
                and 0 < calibration["scale"] < float("inf")):
            raise ModelFileError(f"{origin!r} has an invalid committee calibration "
                                 f"{calibration!r}; calibrate it again with `mlpot calibrate`")
    if record.get("dtype") not in DTYPES:
        raise ModelFileError(f"{origin!r} has an unsupported dtype {record.get('dtype')!r}")
    units = record.get("units", {})
    if units != {"energy": "eV", "length": "Å"}:
        raise ModelFileError(f"{origin!r} declares units {units}; mlpot models must be eV and Å")


_INTERFACES = {}
_COMMITTEE_INTERFACES = {}  # files whose record has a "committee" entry (docs/committee.md)


def deployed_interface(name: str, committee: bool = False):
    """Class decorator: the ``DeployedModel`` subclass that runs files whose record says
    ``"interface": name`` (and, with ``committee``, has a ``"committee"`` entry). Each interface
    turns inputs into the same outputs as ``__call__``."""

    def register(cls):
        (_COMMITTEE_INTERFACES if committee else _INTERFACES)[name] = cls
        return cls

    return register


@deployed_interface("edge_gradient")
class DeployedModel:
    """A loaded model file: the scripted module plus its checked metadata.

    This class runs the ``edge_gradient`` interface (the scripted module is an
    ``EdgeGradientModel``); other interfaces subclass it and override ``__call__``.
    """

    def __init__(self, module: torch.jit.ScriptModule, metadata: Dict, device: torch.device,
                 dtype: torch.dtype):
        self.module = module
        self.metadata = metadata
        self.device = device
        self.dtype = dtype

    @property
    def species(self):
        return self.metadata["species"]

    @property
    def cutoff(self) -> float:
        return float(self.metadata["cutoff"])

    def __call__(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                 n_local: int, positions: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        if positions is None:
            positions = torch.empty((species.shape[0], 3), dtype=self.dtype, device=self.device)
        with torch.enable_grad():
            return self.module(positions, species, edge_index, edge_vectors, n_local)


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """A torch device that exists here, or a clear error."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} requested, but this torch ({torch.__version__}) sees no CUDA "
            "GPU; use device='cpu'"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not supported; use 'cpu' or 'cuda'")
    return device


def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
               dtype: Optional[str] = None) -> DeployedModel:
    """Load and check a model file; ``dtype`` (float32/float64) overrides the exported one."""
    metadata = read_metadata(path)
    device = resolve_device(device)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be None or one of {sorted(DTYPES)}, got {dtype!r}")
    runtime_torch = torch.__version__.split("+")[0].split(".")[:2]
    exported_torch = str(metadata.get("torch_version", "0.0")).split("+")[0].split(".")[:2]
    if [int(v) for v in exported_torch] > [int(v) for v in runtime_torch]:
        warnings.warn(
            f"{str(path)!r} was exported with torch {metadata['torch_version']}, newer than this "
            f"torch {torch.__version__}; if loading fails, upgrade torch"
        )
    try:
        module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as error:
        raise ModelFileError(
            f"{str(path)!r} could not be loaded as TorchScript ({str(error).splitlines()[0]}); "
            "the file is probably corrupted: re-export it with `mlpot export`"
        ) from error
    torch_dtype = DTYPES[dtype or metadata["dtype"]]
    module = module.to(torch_dtype)
    module.eval()
    interfaces = _COMMITTEE_INTERFACES if "committee" in metadata else _INTERFACES
    return interfaces[metadata["interface"]](module, metadata, device, torch_dtype)


def update_metadata(path: Union[str, Path], out: Union[str, Path], changes: Dict) -> Path:
    """Copy the model file ``path`` to ``out`` (may be the same path) with its metadata record's
    top-level keys updated by ``changes`` (e.g. ``{"committee": {..., "calibration": ...}}``).

    Every other entry of the archive is copied byte for byte; the new record is checked like a
    loaded one, and the copy is written to a temporary file and moved into place, with fresh
    CRCs, so that the result passes ``read_metadata``'s checks.
    """
    import os
    import tempfile

    record = read_metadata(path)
    record.update(copy.deepcopy(changes))
    check_metadata(record, str(out))
    text = json.dumps(record, indent=1).encode()
    out = Path(out)
    handle, temporary = tempfile.mkstemp(dir=str(out.resolve().parent), suffix=".tmp")
    os.close(handle)
    try:
        with zipfile.ZipFile(path) as old, zipfile.ZipFile(temporary, "w") as new:
            for item in old.infolist():
                data = old.read(item)
                if item.filename.endswith("/extra/" + METADATA_RECORD):
                    data = text
                new.writestr(item, data)
        os.replace(temporary, out)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    read_metadata(out)
    return out
