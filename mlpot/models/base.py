"""What every trainable model kind provides, so export, training and both front ends treat them alike.

A model kind maps (species indices, directed edges, edge vectors) to one energy per atom. It never
sees absolute positions, cells or ghost flags: those are front-end business. This keeps models
translation invariant by construction and identical in ASE and LAMMPS.
"""

from typing import Dict, List

import torch


class AtomicEnergyModel(torch.nn.Module):
    """Base class for model kinds. Subclasses set ``kind`` and implement ``forward``.

    ``forward(species[N], edge_index[2, E], edge_vectors[E, 3]) -> atom_energies[N]`` where edge
    ``e`` points from centre ``edge_index[0, e]`` to neighbour ``edge_index[1, e]`` and
    ``edge_vectors[e] = r_neighbour - r_centre`` (minimum image not assumed: periodic images are
    separate edges). Every edge shorter than ``cutoff`` must be present in both directions.
    """

    kind: str = "abstract"
    #: how front ends run the exported file (see ``mlpot.model_file.deployed_interface``)
    interface: str = "edge_gradient"

    def __init__(self, species: List[str], cutoff: float, num_interactions: int):
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff} Å")
        if len(set(species)) != len(species) or not species:
            raise ValueError(f"species must be a non-empty list of distinct symbols, got {species}")
        self.species = list(species)
        self.cutoff = float(cutoff)
        self.num_interactions = int(num_interactions)

    @property
    def interaction_range(self) -> float:
        """How far (Å) an atom's energy can depend on other atoms: the ghost-shell width in LAMMPS."""
        return self.cutoff * self.num_interactions

    def hyperparameters(self) -> Dict:
        """Constructor arguments, stored in the model file so that the model can be rebuilt."""
        raise NotImplementedError

    def deployment_metadata(self) -> Dict:
        """Extra metadata-record fields the front ends need to run this kind (none by default)."""
        return {}

    def deployable_module(self) -> torch.nn.Module:
        """The module that ``mlpot export`` scripts: by default the edge-gradient contract."""
        from ..model_file import EdgeGradientModel

        return EdgeGradientModel(self)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor,
                edge_vectors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ShiftScaleModel(AtomicEnergyModel):
    """A kind whose atom energies are ``energy_shift[z] + energy_scale[z] · network``: training
    fits both per-species tensors to the data (``mlpot.train.model_setup``), so that the network
    only learns an O(1) correction. Subclasses provide the two float64 tensors."""

    energy_shift: torch.Tensor
    energy_scale: torch.Tensor

    @torch.no_grad()
    def set_energy_shift_scale(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Per-species energy offset (eV, e.g. fitted atom reference energies) and scale (eV)."""
        shift, scale = torch.as_tensor(shift), torch.as_tensor(scale)
        expected = (len(self.species),)
        if shift.shape != expected or scale.shape != expected:
            raise ValueError(f"shift and scale need shape {expected} (one value per species), got "
                             f"{tuple(shift.shape)} and {tuple(scale.shape)}")
        self.energy_shift.copy_(shift)
        self.energy_scale.copy_(scale)
