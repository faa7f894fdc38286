"""Committee (ensemble) of models of one kind: the mean as the potential, the spread as uncertainty.

``Committee(members)`` is itself a model kind (``kind = "committee"``): its atom energies are the
mean of the members' and it exports to ONE model file whose scripted module also returns every
member's outputs, so that front ends can compute the members' forces with the same edge sums as
the mean's (``mlpot.edge_sums`` in ASE, the plugin's C++ loop in LAMMPS). See docs/committee.md.

Edge-gradient kinds (PaiNN): ``forward(positions, species, edge_index, edge_vectors, n_local)``
returns the usual ``energy``, ``atom_energies``, ``edge_gradient`` (of the mean model) plus

* ``member_energies``        [M]              Σ of each member's local atom energies (eV)
* ``member_atom_energies``   [M, n_local]     each member's atom energies (eV)
* ``member_edge_gradients``  [M, E, 3]        each member's ∂E_k/∂r_e (eV/Å)

computed with one ``autograd.grad`` per member on the shared edge vectors; ``edge_gradient`` is
the mean of ``member_edge_gradients`` and ``atom_energies`` the mean of ``member_atom_energies``.

Descriptor kinds (Behler–Parrinello): members share the symmetry functions, so descriptors are
computed once; the scripted module's ``forward(descriptors, species)`` returns the mean atom
energies (a plain descriptor front end runs the file as the mean model) and the exported method
``member_atom_energies(descriptors, species) -> [M, N]`` the members'; a committee front end takes
each member's dE_k/dG by autograd and applies the kernel's chain rule once per member.

Several model files can also form a committee without merging them (``load_committee``); the
outputs are the same. ``committee_from_files`` merges them into one ``Committee`` to export.
"""

import copy
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..model_file import (DTYPES, DeployedModel, ModelFileError, deployed_interface, load_model,
                          resolve_device)
from .base import AtomicEnergyModel
from .behler_parrinello import DescriptorDeployedModel

#: Keys a committee's scripted edge-gradient module adds to the contract.
MEMBER_OUTPUTS = ["member_energies", "member_atom_energies", "member_edge_gradients"]
#: Exported method of a descriptor-interface committee module.
DESCRIPTOR_MEMBER_METHOD = "member_atom_energies"
#: What front ends compute from a committee file (recorded in its metadata ``outputs``).
COMMITTEE_OUTPUTS = ["energy", "forces", "virial", "atom_energies", "atom_virial", "uncertainty"]


def committee_outputs(member_energies: torch.Tensor, member_atom_energies: torch.Tensor,
                      member_edge_gradients: torch.Tensor) -> Dict[str, torch.Tensor]:
    """A committee's outputs from its members' (every committee form returns these): the
    committee is the members' mean. Scripted into edge-gradient committee files."""
    atom_energies = member_atom_energies.mean(0)
    return {"energy": atom_energies.sum(), "atom_energies": atom_energies,
            "edge_gradient": member_edge_gradients.mean(0),
            "member_energies": member_energies,
            "member_atom_energies": member_atom_energies,
            "member_edge_gradients": member_edge_gradients}


class CommitteeEdgeGradientModel(nn.Module):
    """The scripted module of an edge-gradient committee (see the module docstring)."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, positions: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
                edge_vectors: torch.Tensor, n_local: int) -> Dict[str, torch.Tensor]:
        if not edge_vectors.requires_grad:
            edge_vectors = edge_vectors.detach().requires_grad_(True)
        energies: List[torch.Tensor] = []
        atom_energies: List[torch.Tensor] = []
        gradients: List[torch.Tensor] = []
        for member in self.members:
            member_atom_energies = member(species, edge_index, edge_vectors)[:n_local]
            energy = member_atom_energies.sum()
            gradient = torch.autograd.grad([energy], [edge_vectors], allow_unused=True)[0]
            if gradient is None:  # no edges reach a local atom
                gradient = torch.zeros_like(edge_vectors)
            energies.append(energy.detach())
            atom_energies.append(member_atom_energies.detach())
            gradients.append(gradient)
        return committee_outputs(torch.stack(energies), torch.stack(atom_energies),
                                 torch.stack(gradients))


class CommitteeDescriptorModel(nn.Module):
    """The scripted module of a descriptor committee: members' networks on shared descriptors."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, descriptors: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.member_atom_energies(descriptors, species).mean(0)

    @torch.jit.export
    def member_atom_energies(self, descriptors: torch.Tensor,
                             species: torch.Tensor) -> torch.Tensor:
        outputs: List[torch.Tensor] = []
        for member in self.members:
            outputs.append(member(descriptors, species))
        return torch.stack(outputs)


class Committee(AtomicEnergyModel):
    """M models of one kind, species list and cutoff; atom energies are the members' mean.

    ``members``: the models, or (to rebuild from a file's ``hyperparameters``) their
    hyperparameter dicts together with ``member_kind``.
    """

    kind = "committee"

    def __init__(self, members: Sequence[Union[AtomicEnergyModel, Dict]],
                 member_kind: Optional[str] = None):
        members = list(members)
        if members and all(isinstance(m, dict) for m in members):
            if member_kind is None:
                raise ValueError("Committee from hyperparameter dicts needs member_kind")
            from ..checkpoint import build_model

            members = [build_model(member_kind, hyperparameters) for hyperparameters in members]
        check_members(members, member_kind)
        first = members[0]
        super().__init__(first.species, first.cutoff,
                         max(m.num_interactions for m in members))
        self.interface = first.interface
        self.member_kind = first.kind
        self.members = nn.ModuleList(members)

    @property
    def num_members(self) -> int:
        return len(self.members)

    def hyperparameters(self) -> Dict:
        return {"member_kind": self.member_kind,
                "members": [m.hyperparameters() for m in self.members]}

    def deployment_metadata(self) -> Dict:
        record = dict(self.members[0].deployment_metadata())
        committee = {"members": self.num_members, "member_kind": self.member_kind}
        if self.interface == "edge_gradient":
            committee["member_outputs"] = list(MEMBER_OUTPUTS)
        else:
            committee["member_method"] = DESCRIPTOR_MEMBER_METHOD
        record["outputs"] = list(COMMITTEE_OUTPUTS)
        record["committee"] = committee
        return record

    def deployable_module(self) -> nn.Module:
        if self.interface == "edge_gradient":
            return CommitteeEdgeGradientModel(list(self.members))
        return CommitteeDescriptorModel([m.deployable_module() for m in self.members])

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor,
                edge_vectors: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(species, edge_index, edge_vectors) for m in self.members]).mean(0)


def check_members(members: Sequence, member_kind: Optional[str] = None) -> None:
    """Refuse member lists that cannot form one committee, saying why."""
    if len(members) < 2:
        raise ValueError(f"a committee needs at least 2 members, got {len(members)}")
    for k, member in enumerate(members):
        if isinstance(member, Committee):
            raise ValueError(f"member {k} is itself a committee; committees cannot be nested "
                             "(pass its members instead)")
        if not isinstance(member, AtomicEnergyModel):
            raise ValueError(f"member {k} is a {type(member).__name__}, not an mlpot model kind")
    kinds = [m.kind for m in members]
    if len(set(kinds)) > 1:
        raise ValueError(f"committee members must all be of one model kind, got {kinds}")
    if member_kind is not None and kinds[0] != member_kind:
        raise ValueError(f"member_kind is {member_kind!r} but the members are {kinds[0]!r}")
    first = members[0]
    for k, member in enumerate(members[1:], 1):
        if list(member.species) != list(first.species):
            raise ValueError(f"committee members need the same species in the same order: member "
                             f"0 has {list(first.species)}, member {k} {list(member.species)}")
        if member.cutoff != first.cutoff:
            raise ValueError(f"committee members need the same cutoff: member 0 has "
                             f"{first.cutoff} Å, member {k} {member.cutoff} Å")
        if member.deployment_metadata() != first.deployment_metadata():
            raise ValueError(
                f"member {k} has other deployment metadata than member 0 (e.g. another set of "
                "symmetry functions); a committee file computes the descriptors once for all "
                "members, so they must be the same")
    if first.interface == "edge_gradient":
        custom = [k for k, m in enumerate(members)
                  if type(m).deployable_module is not AtomicEnergyModel.deployable_module]
        if custom:
            raise ValueError(f"members {custom} ({first.kind}) deploy a custom edge-gradient "
                             "module; committees support kinds with the default one")
    elif first.interface != "descriptor":
        raise ValueError(f"committees of {first.interface!r}-interface kinds are not supported "
                         "(edge_gradient and descriptor are)")


def committee_from_files(paths: Sequence[Union[str, Path]]) -> Committee:
    """One trainable ``Committee`` from several model files (or training checkpoints) of one kind,
    e.g. to export them as one file (``mlpot.export_model(committee_from_files(paths), out)``)."""
    if len(paths) < 2:
        raise ValueError(f"a committee needs at least 2 model files, got {len(paths)}")
    members = [trainable_model(path) for path in paths]
    for path, model in zip(paths, members):
        if isinstance(model, Committee):
            raise ValueError(f"{str(path)!r} is already a committee; committees cannot be nested")
    return Committee(members)


def trainable_model(path: Union[str, Path]) -> AtomicEnergyModel:
    """The eager (trainable) float64 model of a model file or a training checkpoint: the kind is
    rebuilt from the record's hyperparameters and the scripted weights are loaded into the module
    that the kind deploys (which shares its tensors with the eager model)."""
    from ..checkpoint import build_model, load_checkpoint
    from ..model_file import read_metadata

    try:
        record = read_metadata(path)
    except ModelFileError:
        model, _ = load_checkpoint(path)
        return model.double()
    model = build_model(record["model_kind"], record["hyperparameters"]).double()
    scripted = torch.jit.load(str(path), map_location="cpu")
    try:
        model.deployable_module().load_state_dict(scripted.state_dict())
    except RuntimeError as error:
        raise ValueError(f"cannot map the weights of {str(path)!r} onto its model kind "
                         f"{record['model_kind']!r} ({str(error).splitlines()[0]})") from error
    return model


# --------------------------------------------------------------------------- deployed committees


def calibration_scale(metadata: Dict) -> Optional[float]:
    """The conformal scale of the force deviation stored in a committee record, or None."""
    calibration = (metadata.get("committee") or {}).get("calibration")
    if not calibration:
        return None
    return float(calibration["scale"])


def calibration_of_files(path: Union[str, Path], paths: Sequence[Union[str, Path]]) -> Dict:
    """The calibration record of the committee file that ``mlpot calibrate`` merged from files
    named like ``paths`` (its metadata ``committee_of_files``): a scale fitted on other members
    would be meaningless, so other files are refused."""
    from ..model_file import read_metadata

    record = read_metadata(path)
    calibration = (record.get("committee") or {}).get("calibration")
    if not calibration:
        raise ValueError(f"{str(path)!r} has no calibration scale; make one with `mlpot "
                         f"calibrate FILE ... --data ... --output {path}`")
    recorded = (record.get("metadata") or {}).get("committee_of_files")
    if not recorded:
        raise ValueError(f"{str(path)!r} records no member files (metadata committee_of_files): "
                         "its scale belongs to its own members; use that file itself, or give "
                         "the scale as a number")
    if sorted(Path(name).name for name in recorded) != sorted(Path(p).name for p in paths):
        raise ValueError(f"{str(path)!r} was calibrated for the files {recorded}, not for "
                         f"{[Path(p).name for p in paths]}; calibrate these files together with "
                         "`mlpot calibrate`, or give the scale as a number")
    return calibration


@deployed_interface("edge_gradient", committee=True)
class DeployedEdgeGradientCommittee(DeployedModel):
    """A one-file committee of an edge-gradient kind: the scripted module returns the member
    outputs itself (``DeployedModel.__call__`` passes them on)."""


@deployed_interface("descriptor", committee=True)
class DeployedDescriptorCommittee(DescriptorDeployedModel):
    """A one-file committee of a descriptor kind: kernel descriptors once, each member's network
    and dE_k/dG, the kernel's chain rule per member; the mean is the members' mean."""

    def __call__(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                 n_local: int, positions: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        descriptors, chain_rule = self.descriptors(species, edge_index, edge_vectors, n_local)
        gradients = []
        with torch.enable_grad():
            member_atom_energies = getattr(self.module, DESCRIPTOR_MEMBER_METHOD)(
                descriptors, species[:n_local].to(self.device))
            member_energies = member_atom_energies.sum(1)
            count = member_energies.shape[0]
            for k in range(count):
                (dE_dG,) = torch.autograd.grad([member_energies[k]], [descriptors],
                                               retain_graph=k + 1 < count, allow_unused=True)
                gradients.append(chain_rule(torch.zeros_like(descriptors) if dE_dG is None
                                            else dE_dG))
        return committee_outputs(member_energies.detach(), member_atom_energies.detach(),
                                 torch.stack(gradients))


class DeployedCommittee(DeployedModel):
    """Several loaded model files run as one committee (``load_committee``): each member is
    evaluated in turn and the outputs are those of a one-file committee."""

    def __init__(self, members: Sequence[DeployedModel], calibration: Optional[Dict] = None,
                 names: Optional[Sequence[str]] = None):
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"a committee needs at least 2 models, got {len(members)}")
        first = members[0].metadata
        paths = [str(n) for n in names] if names else [f"member {k}" for k in range(len(members))]
        for k, member in enumerate(members):
            record = member.metadata
            if "committee" in record:
                raise ValueError(f"{paths[k]!r} is already a committee; committees cannot be "
                                 "nested (give member files, or use that file alone)")
            if record["species"] != first["species"]:
                raise ValueError(f"committee members need the same species in the same order: "
                                 f"{paths[0]!r} has {first['species']}, {paths[k]!r} "
                                 f"{record['species']}")
            if float(record["cutoff"]) != float(first["cutoff"]):
                raise ValueError(f"committee members need the same cutoff: {paths[0]!r} has "
                                 f"{first['cutoff']} Å, {paths[k]!r} {record['cutoff']} Å")
            if member.dtype != members[0].dtype or member.device != members[0].device:
                raise ValueError(f"committee members must run in one dtype on one device: "
                                 f"{paths[0]!r} {members[0].dtype}, {paths[k]!r} {member.dtype}; "
                                 "pass dtype= to load_committee")
        kinds = [m.metadata["model_kind"] for m in members]
        metadata = copy.deepcopy(first)
        metadata.update({
            "model_kind": "committee",
            "num_interactions": max(int(m.metadata["num_interactions"]) for m in members),
            "interaction_range": max(float(m.metadata["interaction_range"]) for m in members),
            "outputs": list(COMMITTEE_OUTPUTS),
            "committee": {"members": len(members),
                          "member_kind": kinds[0] if len(set(kinds)) == 1 else kinds,
                          "files": paths},
        })
        if len(set(kinds)) == 1:
            metadata["hyperparameters"] = {"member_kind": kinds[0], "members": [
                m.metadata["hyperparameters"] for m in members]}
        if calibration is not None:
            metadata["committee"]["calibration"] = calibration
        super().__init__(None, metadata, members[0].device, members[0].dtype)
        self.members = members

    def __call__(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                 n_local: int, positions: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        outputs = [m(species, edge_index, edge_vectors, n_local, positions) for m in self.members]
        energies, atom_energies, gradients = (torch.stack([o[key].detach() for o in outputs])
                                              for key in ("energy", "atom_energies",
                                                          "edge_gradient"))
        return committee_outputs(energies, atom_energies, gradients)


def load_committee(paths: Union[str, Path, Sequence[Union[str, Path]]],
                   device: Union[str, torch.device] = "cpu", dtype: Optional[str] = None,
                   calibration: Union[None, float, Dict, str, Path] = None) -> DeployedModel:
    """A committee from one committee file or from several model files of the same species and
    cutoff (evaluated one after the other, same outputs as a one-file committee).

    ``calibration``, for several files (which have none of their own): the conformal scale s of
    the force deviation (dimensionless: σ_i → s·σ_i), as a number, a ``{"scale": s, ...}`` record,
    or the committee file that ``mlpot calibrate a.pt b.pt ... --output FILE`` wrote for these
    files (its record; refused if it was calibrated for other files). The same as
    ``pair_style mlpot calibration S|FILE`` in LAMMPS.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be None or one of {sorted(DTYPES)}, got {dtype!r}")
    if len(paths) == 1:
        model = load_model(paths[0], device=device, dtype=dtype)
        if "committee" not in model.metadata:
            raise ModelFileError(f"{str(paths[0])!r} is a single model, not a committee; give "
                                 "several model files (or a committee file)")
        if calibration is not None:
            raise ValueError("a committee file carries its own calibration (mlpot calibrate)")
        return model
    if not paths:
        raise ValueError("load_committee needs model files")
    resolve_device(device)
    members = [load_model(path, device=device, dtype=dtype) for path in paths]
    if isinstance(calibration, (str, Path)):
        calibration = calibration_of_files(calibration, paths)
    if isinstance(calibration, (int, float)):
        calibration = {"scale": float(calibration)}
    if calibration is not None and not (isinstance(calibration, dict) and "scale" in calibration
                                        and np.isfinite(float(calibration["scale"]))
                                        and float(calibration["scale"]) > 0):
        raise ValueError(f"calibration must be a positive scale or {{'scale': s, ...}}, got "
                         f"{calibration!r}")
    return DeployedCommittee(members, calibration, names=[str(p) for p in paths])
