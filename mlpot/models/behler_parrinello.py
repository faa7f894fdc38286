"""Behler–Parrinello neural-network potential: per-species networks on symmetry functions.

E = Σ_i E_i with E_i = shift[z_i] + scale[z_i] · NN_{z_i}((G_i − mean[z_i]) / std[z_i]), where
G_i are the atom-centred symmetry functions of atom i (``mlpot.symmetry_functions``), computed
by the C++ kernel together with their derivatives with respect to every edge vector.

Deployment (``interface = "descriptor"``): the model file holds only the networks,
``forward(descriptors[N, F], species[N]) -> atom_energies[N]`` (normalisation and energy
shift/scale included), and the metadata record holds the symmetry-function set
(``record["symmetry_functions"]``, ``SymmetryFunctionSet.to_dict()`` form). A front end computes
descriptors and their derivatives with the kernel, runs the network, takes dE/dG by autograd and
applies the chain rule g_e = Σ_f dE/dG_{i(e), f} ∂G_{i(e), f}/∂r_e, which yields the same
``edge_gradient`` as every other kind (see :class:`DescriptorDeployedModel`).
"""

from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..model_file import DeployedModel, deployed_interface
from ..symmetry_functions import SymmetryFunctionSet, symmetry_function_descriptors
from .base import ShiftScaleModel

ACTIVATIONS = {"tanh": nn.Tanh, "silu": nn.SiLU, "softplus": nn.Softplus}
#: Features whose spread over the data is below this are left unscaled by fit_normalisation.
MIN_FEATURE_STD = 1e-6


class AtomicNetworks(nn.Module):
    """The scripted part: one feed-forward network per species on normalised descriptors."""

    def __init__(self, num_species: int, num_features: int, hidden_layers: Sequence[int],
                 activation: str):
        super().__init__()
        networks = []
        for _ in range(num_species):
            layers: List[nn.Module] = []
            width = num_features
            for hidden in hidden_layers:
                layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
                width = hidden
            layers.append(nn.Linear(width, 1))
            networks.append(nn.Sequential(*layers))
        self.networks = nn.ModuleList(networks)
        # float64 buffers (cast in forward), like PaiNN's: reference energies of O(1000) eV.
        self.register_buffer("feature_mean", torch.zeros(num_species, num_features,
                                                         dtype=torch.float64))
        self.register_buffer("feature_std", torch.ones(num_species, num_features,
                                                       dtype=torch.float64))
        self.register_buffer("energy_shift", torch.zeros(num_species, dtype=torch.float64))
        self.register_buffer("energy_scale", torch.ones(num_species, dtype=torch.float64))

    def forward(self, descriptors: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        dtype = descriptors.dtype
        mean, std = self.feature_mean.to(dtype), self.feature_std.to(dtype)
        x = (descriptors - mean[species]) / std[species]
        output = torch.zeros(species.shape[0], dtype=dtype, device=descriptors.device)
        for s, network in enumerate(self.networks):
            atoms = torch.nonzero(species == s).squeeze(1)
            if atoms.shape[0] > 0:
                output = output.index_put((atoms,), network(x.index_select(0, atoms)).squeeze(1))
        shift, scale = self.energy_shift.to(dtype), self.energy_scale.to(dtype)
        return shift[species] + scale[species] * output


class BehlerParrinello(ShiftScaleModel):
    """Behler–Parrinello model: per-species MLPs on symmetry functions (one "interaction").

    ``symmetry_functions``: a :class:`SymmetryFunctionSet` or its dict form; its species must be
    the model's species (its ``species`` key may be left out). The cutoff is the set's.
    ``hidden_layers``: widths of the hidden layers of every species' network.
    """

    kind = "behler_parrinello"
    interface = "descriptor"

    def __init__(self, species: Sequence[str],
                 symmetry_functions: Union[SymmetryFunctionSet, Dict],
                 hidden_layers: Sequence[int] = (32, 32), activation: str = "tanh"):
        if isinstance(symmetry_functions, dict):
            record = dict(symmetry_functions)
            record.setdefault("species", list(species))
            symmetry_functions = SymmetryFunctionSet.from_dict(record)
        if not isinstance(symmetry_functions, SymmetryFunctionSet):
            raise ValueError("symmetry_functions must be a SymmetryFunctionSet or its dict form")
        if list(symmetry_functions.species) != list(species):
            raise ValueError(
                f"the symmetry functions are defined for species {list(symmetry_functions.species)}"
                f" but the model has {list(species)}; use the same species in the same order")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}")
        hidden_layers = [int(h) for h in hidden_layers]
        if any(h < 1 for h in hidden_layers):
            raise ValueError(f"hidden layer widths must be positive, got {hidden_layers}")
        super().__init__(list(species), symmetry_functions.cutoff, 1)
        self.symmetry_functions = symmetry_functions
        self.hidden_layers = hidden_layers
        self.activation = activation
        self.network = AtomicNetworks(len(species), symmetry_functions.num_features,
                                      hidden_layers, activation)

    @property
    def energy_shift(self) -> torch.Tensor:
        return self.network.energy_shift

    @property
    def energy_scale(self) -> torch.Tensor:
        return self.network.energy_scale

    def hyperparameters(self) -> Dict:
        return {
            "species": list(self.species),
            "symmetry_functions": self.symmetry_functions.to_dict(),
            "hidden_layers": list(self.hidden_layers),
            "activation": self.activation,
        }

    def deployment_metadata(self) -> Dict:
        return {"symmetry_functions": self.symmetry_functions.to_dict()}

    def deployable_module(self) -> nn.Module:
        return self.network

    def grow_species(self, species: Sequence[str]) -> "BehlerParrinello":
        """Refused: a new species adds radial and angular blocks to every atom's descriptor, so
        the existing networks' inputs change meaning and their weights cannot be kept."""
        added = sorted(set(species) - set(self.species))
        raise ValueError(f"a behler_parrinello model cannot add species {added}: each new species "
                         "adds descriptor blocks that the trained networks have never seen; train "
                         "a new model with model.species set to all the elements")

    @torch.no_grad()
    def fit_normalisation(self, descriptors: torch.Tensor,
                          species: Optional[torch.Tensor] = None) -> None:
        """Feature mean and standard deviation from data: ``descriptors`` [N, F] of N atoms
        (e.g. from :meth:`descriptors`), per centre species if ``species`` [N] is given (species
        without atoms keep the statistics of all atoms). Features that do not vary are centred
        but not scaled."""
        descriptors = torch.as_tensor(descriptors, dtype=torch.float64)
        F = self.symmetry_functions.num_features
        if descriptors.dim() != 2 or descriptors.shape[1] != F or descriptors.shape[0] == 0:
            raise ValueError(f"descriptors must have shape (n_atoms > 0, {F}), got "
                             f"{tuple(descriptors.shape)}")

        def statistics(x):
            std = x.std(dim=0, unbiased=False) if x.shape[0] > 1 else torch.zeros(F, dtype=x.dtype)
            return x.mean(dim=0), torch.where(std > MIN_FEATURE_STD, std, torch.ones_like(std))

        mean_all, std_all = statistics(descriptors)
        mean = mean_all.expand(len(self.species), F).clone()
        std = std_all.expand(len(self.species), F).clone()
        if species is not None:
            species = torch.as_tensor(species, dtype=torch.long)
            if species.shape != (descriptors.shape[0],):
                raise ValueError(f"species must have shape ({descriptors.shape[0]},), got "
                                 f"{tuple(species.shape)}")
            for s in range(len(self.species)):
                selected = descriptors[species == s]
                if selected.shape[0] > 0:
                    mean[s], std[s] = statistics(selected)
        self.network.feature_mean.copy_(mean)
        self.network.feature_std.copy_(std)

    def descriptors(self, species: torch.Tensor, edge_index: torch.Tensor,
                    edge_vectors: torch.Tensor) -> torch.Tensor:
        """Symmetry functions [N, F] of every atom, differentiable w.r.t. ``edge_vectors``."""
        return symmetry_function_descriptors(self.symmetry_functions, species, edge_index,
                                             edge_vectors)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor,
                edge_vectors: torch.Tensor) -> torch.Tensor:
        return self.network(self.descriptors(species, edge_index, edge_vectors), species)


@deployed_interface("descriptor")
class DescriptorDeployedModel(DeployedModel):
    """Runs ``interface = "descriptor"`` files: kernel descriptors → scripted networks → dE/dG →
    chain rule with the kernel's ∂G/∂r_e. Returns the same outputs as the edge-gradient contract.
    """

    def __init__(self, module: torch.jit.ScriptModule, metadata: Dict, device: torch.device,
                 dtype: torch.dtype):
        super().__init__(module, metadata, device, dtype)
        self.symmetry_functions = SymmetryFunctionSet.from_dict(metadata["symmetry_functions"])

    def descriptors(self, species: torch.Tensor, edge_index: torch.Tensor,
                    edge_vectors: torch.Tensor, n_local: int):
        """Kernel descriptors of the local atoms (a leaf tensor for dE/dG), and a function that
        applies the kernel's chain rule to dE/dG, giving the edge gradient.

        Two kernel passes: descriptors, then (after the network) the chain rule with the
        derivatives recomputed and contracted centre by centre: faster than storing
        ∂G/∂r_e [E, F, 3] and contracting it, and memory O(N F)."""
        sf = self.symmetry_functions
        species_np = species.detach().to("cpu", torch.int64).contiguous().numpy()
        edges_np = edge_index.detach().to("cpu", torch.int64).contiguous().numpy()
        vectors_np = edge_vectors.detach().to("cpu", torch.float64).contiguous().numpy()
        centres = np.arange(int(n_local), dtype=np.int64)
        G, _ = sf.compute(species_np, edges_np, vectors_np, centres, derivatives=False)
        descriptors = torch.from_numpy(G).to(self.device, self.dtype).requires_grad_(True)

        def chain_rule(dE_dG: torch.Tensor) -> torch.Tensor:
            weights = dE_dG.detach().to("cpu", torch.float64).contiguous().numpy()
            gradient = sf.gradient(species_np, edges_np, vectors_np, weights, centres)
            return torch.from_numpy(gradient).to(self.device, self.dtype)

        return descriptors, chain_rule

    def __call__(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                 n_local: int, positions: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        descriptors, chain_rule = self.descriptors(species, edge_index, edge_vectors, n_local)
        with torch.enable_grad():
            atom_energies = self.module(descriptors, species[:n_local].to(self.device))
            energy = atom_energies.sum()
            (dE_dG,) = torch.autograd.grad([energy], [descriptors])
        return {"energy": energy.detach(), "atom_energies": atom_energies.detach(),
                "edge_gradient": chain_rule(dE_dG)}
