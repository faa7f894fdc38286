"""Radial building blocks shared by model kinds: a Bessel basis and a smooth cutoff envelope.

A model whose every edge-dependent term is multiplied by ``PolynomialEnvelope`` has an energy whose
value, first and second derivatives go to zero as an edge length reaches the cutoff, so energies
and forces stay continuous when neighbours enter or leave the cutoff sphere (no energy drift in MD).
"""

import math

import torch


def safe_norm(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis, exact for non-zero vectors, finite gradient at zero.

    Squared lengths are clamped to 1e-20 Å² before the square root, so that a zero-length vector
    (never a real edge) gives a zero gradient instead of NaN.
    """
    return torch.sqrt(torch.clamp((vectors * vectors).sum(-1), min=1e-20))


class BesselBasis(torch.nn.Module):
    """``sqrt(2/rc) sin(nπr/rc) / r`` for n = 1..num_radial (DimeNet, Gasteiger et al. 2020).

    The radial eigenfunctions of a spherical well: orthonormal on [0, rc] and their frequencies
    resolve the whole interval evenly, which Gaussians need a width hyperparameter to do.
    """

    def __init__(self, cutoff: float, num_radial: int):
        super().__init__()
        if num_radial < 1:
            raise ValueError(f"num_radial must be at least 1, got {num_radial}")
        self.prefactor = math.sqrt(2.0 / cutoff)
        self.register_buffer(
            "frequencies", math.pi / cutoff * torch.arange(1, num_radial + 1, dtype=torch.float64)
        )

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        """``lengths[E]`` (> 0) → ``[E, num_radial]``."""
        r = lengths.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies.to(r.dtype) * r) / r


class PolynomialEnvelope(torch.nn.Module):
    """``1 − (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) − p(p+1)/2 x^(p+2)`` for x = r/rc < 1, else 0.

    The polynomial envelope of DimeNet/NequIP: equals 1 at r = 0 with zero derivatives up to order
    p − 1, and reaches 0 at r = rc with zero first and second derivatives, so that energy, forces
    and force derivatives are continuous at the cutoff. Edges at or beyond rc give exactly 0.
    """

    def __init__(self, cutoff: float, exponent: int = 6):
        super().__init__()
        if exponent < 2:
            raise ValueError(f"exponent must be at least 2 for smooth forces, got {exponent}")
        self.cutoff = float(cutoff)
        self.p = float(exponent)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = lengths / self.cutoff
        xp = torch.pow(x, p)
        value = (1.0 - 0.5 * (p + 1.0) * (p + 2.0) * xp + p * (p + 2.0) * xp * x
                 - 0.5 * p * (p + 1.0) * xp * x * x)
        return torch.where(x < 1.0, value, torch.zeros_like(value))
