"""Training graphs: neighbour lists computed once per structure, many structures per batch.

A batch is one disjoint graph (edge indices offset per structure), run through the same
``EdgeGradientModel`` contract as the deployed file. Forces, virials and stresses then follow
from the edge gradient with the sums of ``mlpot.edge_sums``, here in differentiable torch form:
F_i += g_e, F_j −= g_e, W = −Σ r_e ⊗ g_e per structure, stress = −W / V.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .data import MIN_DISTANCE, DataError, Labelled


def neighbour_pairs(structure: Labelled, cutoff: float):
    """(i, j, integer shifts S) of every pair closer than ``cutoff``, both directions."""
    try:  # the C++ kernel's list; same contract as ase's/matscipy's
        from ..neighbours import primitive_neighbour_list
    except ImportError:  # kernel not built: ase's pure-Python list
        from ase.neighborlist import primitive_neighbor_list as primitive_neighbour_list
    return primitive_neighbour_list("ijS", structure.pbc, structure.cell, structure.positions,
                                    cutoff)


@dataclass
class Graph:
    """One structure as tensors, ready to be batched."""

    species: torch.Tensor       # [N] int64 species indices
    positions: torch.Tensor     # [N, 3]
    edge_index: torch.Tensor    # [2, E]
    edge_vectors: torch.Tensor  # [E, 3] r_j − r_i + S·cell
    energy: float
    forces: Optional[torch.Tensor]
    stress: Optional[torch.Tensor]
    volume: float

    @property
    def num_atoms(self) -> int:
        return int(self.species.shape[0])


def build_graphs(structures: Sequence[Labelled], species: Sequence[str], cutoff: float,
                 dtype: torch.dtype) -> List[Graph]:
    from ase.data import atomic_numbers

    lookup = np.full(119, -1, dtype=np.int64)
    for k, symbol in enumerate(species):
        lookup[atomic_numbers[symbol]] = k
    graphs = []
    for s in structures:
        i, j, shifts = neighbour_pairs(s, cutoff)
        vectors = s.positions[j] - s.positions[i] + shifts @ s.cell
        if len(i):
            lengths = np.sqrt(np.einsum("ek,ek->e", vectors, vectors))
            shortest = int(np.argmin(lengths))
            if lengths[shortest] < MIN_DISTANCE:
                raise DataError(f"{s.source}: atoms {i[shortest]} and {j[shortest]} are "
                                f"{lengths[shortest]:.3g} Å apart (overlapping atoms)")
        graphs.append(Graph(
            species=torch.from_numpy(lookup[s.numbers]),
            positions=torch.from_numpy(s.positions).to(dtype),
            edge_index=torch.from_numpy(np.stack([i, j]).astype(np.int64)),
            edge_vectors=torch.from_numpy(vectors).to(dtype),
            energy=s.energy,
            forces=None if s.forces is None else torch.from_numpy(s.forces).to(dtype),
            stress=None if s.stress is None else torch.from_numpy(s.stress).to(dtype),
            volume=s.volume,
        ))
    return graphs


@dataclass
class Batch:
    species: torch.Tensor       # [N]
    positions: torch.Tensor     # [N, 3]
    edge_index: torch.Tensor    # [2, E]
    edge_vectors: torch.Tensor  # [E, 3]
    atom_batch: torch.Tensor    # [N] structure of each atom
    edge_batch: torch.Tensor    # [E] structure of each edge
    num_atoms: torch.Tensor     # [B] float64
    energy: torch.Tensor        # [B] float64
    forces: torch.Tensor        # [N, 3] (zeros where absent)
    force_mask: torch.Tensor    # [N] bool
    stress: torch.Tensor        # [B, 3, 3] (zeros where absent)
    stress_mask: torch.Tensor   # [B] bool
    volume: torch.Tensor        # [B] (1 where there is no volume)

    @property
    def num_structures(self) -> int:
        return int(self.energy.shape[0])

    def to(self, device) -> "Batch":
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})


def collate(graphs: Sequence[Graph], dtype: torch.dtype) -> Batch:
    """One disjoint graph of ``graphs`` (in order)."""
    sizes = torch.tensor([g.num_atoms for g in graphs])
    edges = torch.tensor([g.edge_index.shape[1] for g in graphs])
    offsets = torch.cumsum(sizes, 0) - sizes
    structure = torch.arange(len(graphs))
    zeros3 = torch.zeros(3, 3, dtype=dtype)
    return Batch(
        species=torch.cat([g.species for g in graphs]),
        positions=torch.cat([g.positions for g in graphs]),
        edge_index=torch.cat([g.edge_index + o for g, o in zip(graphs, offsets.tolist())], 1),
        edge_vectors=torch.cat([g.edge_vectors for g in graphs]),
        atom_batch=torch.repeat_interleave(structure, sizes),
        edge_batch=torch.repeat_interleave(structure, edges),
        num_atoms=sizes.to(torch.float64),
        # total energies (and their errors) in float64: |E| of 1e4–1e5 eV would lose meV in float32
        energy=torch.tensor([g.energy for g in graphs], dtype=torch.float64),
        forces=torch.cat([g.forces if g.forces is not None
                          else torch.zeros(g.num_atoms, 3, dtype=dtype) for g in graphs]),
        force_mask=torch.cat([torch.full((g.num_atoms,), g.forces is not None) for g in graphs]),
        stress=torch.stack([g.stress if g.stress is not None else zeros3 for g in graphs]),
        stress_mask=torch.tensor([g.stress is not None for g in graphs]),
        volume=torch.tensor([g.volume if g.volume > 0 else 1.0 for g in graphs], dtype=dtype),
    )


def edge_forces(edge_index: torch.Tensor, gradient: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """F_i += g_e, F_j −= g_e (torch version of ``mlpot.edge_sums.forces``, differentiable)."""
    forces = torch.zeros((num_atoms, 3), dtype=gradient.dtype, device=gradient.device)
    return forces.index_add(0, edge_index[0], gradient).index_add(0, edge_index[1], -gradient)


def edge_virials(edge_vectors: torch.Tensor, gradient: torch.Tensor, edge_batch: torch.Tensor,
                 num_structures: int) -> torch.Tensor:
    """W_s = −Σ_{e ∈ s} r_e ⊗ g_e per structure, [B, 3, 3] (cf. ``mlpot.edge_sums.virial``)."""
    outer = (edge_vectors.unsqueeze(2) * gradient.unsqueeze(1)).reshape(-1, 9)
    virials = torch.zeros((num_structures, 9), dtype=gradient.dtype, device=gradient.device)
    return -virials.index_add(0, edge_batch, outer).reshape(-1, 3, 3)


def predict(model: torch.nn.Module, batch: Batch, stress: bool, create_graph: bool
            ) -> Dict[str, torch.Tensor]:
    """Energies [B] (float64), forces [N, 3] and (if ``stress``) stresses [B, 3, 3] of a batch.

    ``create_graph=True`` keeps the graph of the forces so that a force loss can be
    differentiated with respect to the weights.
    """
    from ..model_file import EdgeGradientModel

    wrapper = EdgeGradientModel(model, create_graph=create_graph)
    with torch.enable_grad():
        output = wrapper(batch.positions, batch.species, batch.edge_index,
                         batch.edge_vectors, batch.species.shape[0])
    gradient = output["edge_gradient"]
    energy = torch.zeros(batch.num_structures, dtype=torch.float64, device=gradient.device)
    result = {
        "energy": energy.index_add(0, batch.atom_batch, output["atom_energies"].to(torch.float64)),
        "forces": edge_forces(batch.edge_index, gradient, batch.species.shape[0]),
    }
    if stress:
        virials = edge_virials(batch.edge_vectors, gradient, batch.edge_batch, batch.num_structures)
        result["stress"] = -virials / batch.volume.view(-1, 1, 1)
    return result
