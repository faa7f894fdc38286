"""PaiNN: polarizable atom interaction neural network (Schütt, Unke & Gastegger, ICML 2021).

Each atom carries scalar features ``s[N, F]`` (rotation invariant) and vector features
``v[N, 3, F]`` (rotating like positions). Messages and updates only combine them through
operations that commute with rotations and reflections (scaling vectors by invariants, linear
mixing of vector channels without bias, dot products and norms), so atom energies read out from
``s`` are E(3) invariant by construction: no tensor-product library is needed and the module runs
in plain libtorch. See docs/equivariant_model.md for the design choices.
"""

from typing import Dict, List

import torch
from torch import nn

from .base import ShiftScaleModel
from .radial import BesselBasis, PolynomialEnvelope, safe_norm


def _mlp(num_in: int, num_hidden: int, num_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(num_in, num_hidden), nn.SiLU(), nn.Linear(num_hidden, num_out))


class PaiNNMessage(nn.Module):
    """Neighbour j → centre i: scalar and vector messages gated by a radial filter of |r_ij|.

    Δs_i = Σ_j φ_s(s_j) ∘ W_s(r_ij)
    Δv_i = Σ_j v_j ∘ φ_vv(s_j) ∘ W_vv(r_ij) + r̂_ij ⊗ φ_vs(s_j) ∘ W_vs(r_ij)
    with W = Linear(Bessel(r_ij)) · envelope(r_ij), which vanishes smoothly at the cutoff.
    """

    def __init__(self, num_features: int, num_radial: int):
        super().__init__()
        self.num_features = num_features
        self.scalar_net = _mlp(num_features, num_features, 3 * num_features)
        self.radial_filter = nn.Linear(num_radial, 3 * num_features)

    def forward(self, s: torch.Tensor, v: torch.Tensor, centre: torch.Tensor,
                neighbour: torch.Tensor, radial: torch.Tensor, envelope: torch.Tensor,
                unit_vectors: torch.Tensor):
        # The envelope multiplies *after* the linear filter so that its bias vanishes at rc too.
        x = self.scalar_net(s)[neighbour] * self.radial_filter(radial) * envelope.unsqueeze(-1)
        ds, dvv, dvs = torch.split(x, self.num_features, dim=-1)
        dv = v[neighbour] * dvv.unsqueeze(1) + unit_vectors.unsqueeze(-1) * dvs.unsqueeze(1)
        return s.index_add(0, centre, ds), v.index_add(0, centre, dv)


class PaiNNUpdate(nn.Module):
    """Per-atom mixing of scalar and vector channels.

    With U v and V v two bias-free linear mixes of the vector channels:
    Δv = a_vv(s, |Vv|²) ∘ U v,   Δs = a_sv(s, |Vv|²) ∘ ⟨U v, V v⟩ + a_ss(s, |Vv|²).
    ⟨U v, V v⟩ carries angular (three-body) information into the scalars.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.vector_mix = nn.Linear(num_features, 2 * num_features, bias=False)
        self.scalar_net = _mlp(2 * num_features, num_features, 3 * num_features)

    def forward(self, s: torch.Tensor, v: torch.Tensor):
        uv, vv = torch.split(self.vector_mix(v), self.num_features, dim=-1)
        # The squared norm, not PaiNN's norm: vector features vanish by symmetry at many sites
        # (every atom of an ideal diamond or fcc crystal), where |Vv| has a cusp (E ∝ |u| for a
        # displacement u): force constants, phonons and C44 would not exist. |Vv|² is analytic.
        vv_squared = (vv * vv).sum(1)
        a = self.scalar_net(torch.cat([s, vv_squared], dim=-1))
        a_vv, a_sv, a_ss = torch.split(a, self.num_features, dim=-1)
        return s + a_sv * (uv * vv).sum(1) + a_ss, v + a_vv.unsqueeze(1) * uv


class PaiNNInteraction(nn.Module):
    """One message-passing step: message then update (the interaction range grows by rc)."""

    def __init__(self, num_features: int, num_radial: int):
        super().__init__()
        self.message = PaiNNMessage(num_features, num_radial)
        self.update = PaiNNUpdate(num_features)

    def forward(self, s: torch.Tensor, v: torch.Tensor, centre: torch.Tensor,
                neighbour: torch.Tensor, radial: torch.Tensor, envelope: torch.Tensor,
                unit_vectors: torch.Tensor):
        s, v = self.message(s, v, centre, neighbour, radial, envelope, unit_vectors)
        return self.update(s, v)


class PaiNN(ShiftScaleModel):
    """E(3)-invariant atom energies from equivariant scalar + vector message passing.

    ``E_i = shift[z_i] + scale[z_i] · readout(s_i)``; ``shift`` and ``scale`` are per-species
    buffers that training fits to the data (``set_energy_shift_scale``) so that the network only
    learns a normalised, O(1) correction.
    """

    kind = "painn"

    def __init__(self, species: List[str], cutoff: float, num_features: int = 32,
                 num_interactions: int = 2, num_radial: int = 8, envelope_exponent: int = 6):
        super().__init__(species, cutoff, num_interactions)
        if num_features < 1 or num_interactions < 1:
            raise ValueError("num_features and num_interactions must be at least 1, got "
                             f"{num_features} and {num_interactions}")
        self.num_features = int(num_features)
        self.num_radial = int(num_radial)
        self.envelope_exponent = int(envelope_exponent)
        self.embedding = nn.Embedding(len(species), num_features)
        self.radial_basis = BesselBasis(cutoff, num_radial)
        self.envelope = PolynomialEnvelope(cutoff, envelope_exponent)
        self.interactions = nn.ModuleList(
            [PaiNNInteraction(num_features, num_radial) for _ in range(num_interactions)]
        )
        self.readout = _mlp(num_features, num_features, 1)
        # Created in float64, so that values set before the model is converted to float64 keep
        # their precision (atom energies of O(1000) eV lose meV in float32); cast in forward.
        self.register_buffer("energy_shift", torch.zeros(len(species), dtype=torch.float64))
        self.register_buffer("energy_scale", torch.ones(len(species), dtype=torch.float64))

    def hyperparameters(self) -> Dict:
        return {
            "species": list(self.species),
            "cutoff": self.cutoff,
            "num_features": self.num_features,
            "num_interactions": self.num_interactions,
            "num_radial": self.num_radial,
            "envelope_exponent": self.envelope_exponent,
        }

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor,
                edge_vectors: torch.Tensor) -> torch.Tensor:
        centre, neighbour = edge_index[0], edge_index[1]
        lengths = safe_norm(edge_vectors)
        unit_vectors = edge_vectors / lengths.unsqueeze(-1)
        radial = self.radial_basis(lengths)
        envelope = self.envelope(lengths)

        s = self.embedding(species)
        v = torch.zeros((s.shape[0], 3, s.shape[1]), dtype=s.dtype, device=s.device)
        for interaction in self.interactions:
            s, v = interaction(s, v, centre, neighbour, radial, envelope, unit_vectors)
        energy = self.readout(s).squeeze(-1)
        shift, scale = self.energy_shift.to(energy.dtype), self.energy_scale.to(energy.dtype)
        return shift[species] + scale[species] * energy
