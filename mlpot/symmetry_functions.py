"""Atom-centred symmetry functions (Behler 2011): parameter sets, the C++ kernel, autograd.

A :class:`SymmetryFunctionSet` is a plain, JSON-serialisable description (``to_dict`` /
``from_dict`` / ``from_file``); ``compute`` runs the C++ kernel (``cpp_ext/symmetry_functions.cpp``)
on a full edge list, and :func:`symmetry_function_descriptors` wraps it for autograd.

Definitions (sums over the edges of centre i; r_ij = |r_j − r_i + shift|, θ_ijk the angle between
the edges ij and ik, r_jk = |r_ik − r_ij|):

* G2(η, r_s)   = Σ_j exp(−η (r_ij − r_s)²) f_c(r_ij)        (radial, per neighbour species)
* G4(η, ζ, λ)  = 2^{1−ζ} Σ_{j<k} (1 + λ cos θ_ijk)^ζ exp(−η (r_ij² + r_ik² + r_jk²))
                 × f_c(r_ij) f_c(r_ik) f_c(r_jk)
* G5(η, ζ, λ)  = 2^{1−ζ} Σ_{j<k} (1 + λ cos θ_ijk)^ζ exp(−η (r_ij² + r_ik²)) f_c(r_ij) f_c(r_ik)
  (angular, per unordered neighbour-species pair; j < k runs over pairs of distinct edges)

η in 1/Å², r_s and cutoffs in Å. Radial functions use ``cutoff``; angular functions use
``angular_cutoff`` (default: ``cutoff``) for all three distances. Cutoff functions, x = r/rc:

* ``"cosine"``: f_c = ½ (cos πx + 1); value and first derivative vanish at rc (C¹);
* ``"polynomial"``: f_c = 1 − 10x³ + 15x⁴ − 6x⁵ (n2p2's "poly2"); value, first and second
  derivative vanish at rc (C²), so forces are continuously differentiable.

Feature order (F = S·n_radial + S(S+1)/2·n_angular for S species, the set's species order):

1. radial block of neighbour species 0, …, S−1; inside a block, ``radial`` in the given order;
2. angular block of each unordered species pair (s, t), s ≥ t, at index s(s+1)/2 + t, i.e.
   (0,0), (1,0), (1,1), (2,0), (2,1), (2,2), …; inside a block, ``angular`` in the given order.

The same functions describe every centre species (train one network per species on them).
:meth:`SymmetryFunctionSet.feature_names` spells the order out.

Conventions of other codes
--------------------------
* dscribe ``ACSF``: same G2/G4/G5 definitions, including 2^{1−ζ}, cosine cutoff only, one cutoff.
  Its species are sorted by atomic number, each radial block starts with G1 = Σ_j f_c(r_ij)
  (= our G2 with η = 0, r_s = 0), then its ``g2_params``; each pair block holds all
  ``g4_params`` then all ``g5_params``; pair order is the same as ours.
  :meth:`SymmetryFunctionSet.from_dscribe` builds a set whose features equal dscribe's column by
  column; :meth:`SymmetryFunctionSet.to_dscribe` goes back where that is possible. dscribe's G3
  (cos κr) has no counterpart here.
* TorchANI ``AEVComputer``: its radial terms are ¼ exp(−EtaR (r − ShfR)²) f_c(r): our G2 with
  η = EtaR, r_s = ShfR, up to the constant factor ¼ (irrelevant after feature normalisation).
  Its angular terms, 2^{1−ζ} (1 + cos(θ − ShfZ))^ζ exp(−EtaA ((r_ij + r_ik)/2 − ShfA)²)
  f_c(r_ij) f_c(r_ik), have a shifted angle and a Gaussian of the *mean* distance: they are not
  G4/G5 and are not converted (ShfZ = 0 and ShfA = 0 alone still differ by the mean-distance
  Gaussian). :meth:`SymmetryFunctionSet.ani_like` builds an "ANI-like" set instead: ANI's radial
  terms exactly, and as many G4 functions (a grid of η, ζ, λ) with ANI's angular cutoff as ANI
  has angular terms. ANI orders species pairs (0,0), (0,1), …, (0,S−1), (1,1), …; ours differ
  from three species on.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from ase.data import atomic_numbers

CUTOFF_FUNCTIONS = ("cosine", "polynomial")
ANGULAR_KINDS = ("G4", "G5")
_KEYS = ("species", "cutoff", "angular_cutoff", "cutoff_function", "radial", "angular")


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SymmetryFunctionSet:
    """A set of G2, G4 and G5 functions for the given neighbour species (see the module doc).

    ``radial``: (η, r_s) pairs. ``angular``: (kind, η, ζ, λ) with kind "G4" or "G5", ζ ≥ 1,
    λ = ±1. ``angular_cutoff`` defaults to ``cutoff``. Invalid values raise ``ValueError``
    naming the fix.
    """

    species: Tuple[str, ...]
    cutoff: float
    radial: Tuple[Tuple[float, float], ...] = ()
    angular: Tuple[Tuple[str, float, float, float], ...] = ()
    angular_cutoff: Optional[float] = None
    cutoff_function: str = "cosine"
    _kernel: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        species = tuple(self.species) if not isinstance(self.species, str) else (self.species,)
        if not species:
            raise ValueError("species must list at least one chemical symbol, e.g. ['H', 'O']")
        unknown = [s for s in species if s not in atomic_numbers or s == "X"]
        if unknown:
            raise ValueError(f"unknown chemical symbol(s) {unknown} in species; use symbols "
                             "such as 'H', 'Si'")
        if len(set(species)) != len(species):
            raise ValueError(f"species {list(species)} contain duplicates")
        cutoff = _number(self.cutoff, "cutoff")
        if not (cutoff > 0.0 and math.isfinite(cutoff)):
            raise ValueError(f"cutoff must be a positive distance in Å, got {self.cutoff!r}")
        angular_cutoff = None if self.angular_cutoff is None else _number(
            self.angular_cutoff, "angular_cutoff")
        if self.cutoff_function not in CUTOFF_FUNCTIONS:
            raise ValueError(f"unknown cutoff function {self.cutoff_function!r}; use one of "
                             f"{list(CUTOFF_FUNCTIONS)}")
        radial = []
        for k, entry in enumerate(self.radial):
            if len(entry) != 2:
                raise ValueError(f"radial function {k} must be (eta, r_s), got {entry!r}")
            radial.append((_number(entry[0], f"radial function {k}: eta"),
                           _number(entry[1], f"radial function {k}: r_s")))
        angular = []
        for k, entry in enumerate(self.angular):
            if len(entry) != 4 or entry[0] not in ANGULAR_KINDS:
                raise ValueError(f"angular function {k} must be (kind, eta, zeta, lambda) with "
                                 f"kind 'G4' or 'G5', got {entry!r}")
            angular.append((entry[0], _number(entry[1], f"angular function {k}: eta"),
                            _number(entry[2], f"angular function {k}: zeta"),
                            _number(entry[3], f"angular function {k}: lambda")))
        object.__setattr__(self, "species", species)
        object.__setattr__(self, "cutoff", cutoff)
        object.__setattr__(self, "angular_cutoff", angular_cutoff)
        object.__setattr__(self, "radial", tuple(radial))
        object.__setattr__(self, "angular", tuple(angular))
        # Builds the C++ object, which checks η ≥ 0, ζ ≥ 1, λ = ±1, 0 < angular cutoff ≤ cutoff.
        from . import _kernel

        kernel = _kernel.SymmetryFunctions(
            len(species), cutoff, angular_cutoff, self.cutoff_function, list(radial),
            list(angular))
        object.__setattr__(self, "_kernel", kernel)

    def __reduce__(self):  # copy/pickle through the dict form (the C++ object is rebuilt)
        return (SymmetryFunctionSet.from_dict, (self.to_dict(),))

    # -- sizes and names ----------------------------------------------------------------------

    @property
    def num_species(self) -> int:
        return len(self.species)

    @property
    def num_features(self) -> int:
        return self._kernel.num_features

    @property
    def species_pairs(self) -> List[Tuple[str, str]]:
        """Unordered neighbour-species pairs in the order of the angular blocks."""
        return [(self.species[s], self.species[t])
                for s in range(self.num_species) for t in range(s + 1)]

    def feature_names(self) -> List[str]:
        """One readable name per feature, in feature order."""
        names = [f"G2(eta={eta:g}, r_s={r_s:g}; {s})"
                 for s in self.species for eta, r_s in self.radial]
        names += [f"{kind}(eta={eta:g}, zeta={zeta:g}, lambda={lam:+g}; {s}-{t})"
                  for s, t in self.species_pairs for kind, eta, zeta, lam in self.angular]
        return names

    # -- (de)serialisation --------------------------------------------------------------------

    def to_dict(self) -> Dict:
        return {
            "species": list(self.species),
            "cutoff": self.cutoff,
            "angular_cutoff": self.cutoff if self.angular_cutoff is None else self.angular_cutoff,
            "cutoff_function": self.cutoff_function,
            "radial": [{"eta": eta, "r_s": r_s} for eta, r_s in self.radial],
            "angular": [{"kind": kind, "eta": eta, "zeta": zeta, "lambda": lam}
                        for kind, eta, zeta, lam in self.angular],
        }

    @classmethod
    def from_dict(cls, record: Dict) -> "SymmetryFunctionSet":
        """From ``to_dict``'s form; entries may also be lists: [eta, r_s], [kind, eta, zeta, λ]."""
        if isinstance(record, SymmetryFunctionSet):
            return record
        if not isinstance(record, dict):
            raise ValueError(f"a symmetry-function set must be a dict, got {type(record).__name__}")
        unknown = sorted(set(record) - set(_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in the symmetry-function set; known keys: "
                             f"{list(_KEYS)}")
        for key in ("species", "cutoff"):
            if key not in record:
                raise ValueError(f"the symmetry-function set needs {key!r}")
        radial = [cls._radial_entry(k, e) for k, e in enumerate(record.get("radial", []))]
        angular = [cls._angular_entry(k, e) for k, e in enumerate(record.get("angular", []))]
        cutoff_function = record.get("cutoff_function", "cosine")
        angular_cutoff = record.get("angular_cutoff")
        if angular_cutoff is not None and angular_cutoff == record["cutoff"]:
            angular_cutoff = None
        return cls(tuple(record["species"]), record["cutoff"], tuple(radial), tuple(angular),
                   angular_cutoff, cutoff_function)

    @staticmethod
    def _radial_entry(k: int, entry) -> Tuple[float, float]:
        if isinstance(entry, dict):
            extra = sorted(set(entry) - {"eta", "r_s"})
            if extra or "eta" not in entry:
                raise ValueError(f"radial function {k} needs keys eta and r_s (r_s defaults to "
                                 f"0), got {sorted(entry)}")
            return entry["eta"], entry.get("r_s", 0.0)
        return tuple(entry)

    @staticmethod
    def _angular_entry(k: int, entry) -> Tuple:
        if isinstance(entry, dict):
            keys = {"kind", "eta", "zeta", "lambda"}
            if set(entry) - keys or not {"eta", "zeta", "lambda"} <= set(entry):
                raise ValueError(f"angular function {k} needs keys kind (G4 or G5, default G4), "
                                 f"eta, zeta and lambda, got {sorted(entry)}")
            return entry.get("kind", "G4"), entry["eta"], entry["zeta"], entry["lambda"]
        return tuple(entry)

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "SymmetryFunctionSet":
        """A set from a JSON file holding ``to_dict``'s form."""
        with open(path, encoding="utf-8") as stream:
            try:
                record = json.load(stream)
            except json.JSONDecodeError as error:
                raise ValueError(f"{str(path)!r} is not valid JSON ({error})") from error
        return cls.from_dict(record)

    def to_file(self, path: Union[str, Path]) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return Path(path)

    # -- other codes' conventions --------------------------------------------------------------

    @classmethod
    def from_dscribe(cls, r_cut: float, species: Sequence, g2_params=None, g4_params=None,
                     g5_params=None, g3_params=None) -> "SymmetryFunctionSet":
        """The set whose features equal ``dscribe.descriptors.ACSF(r_cut, g2_params, g4_params,
        g5_params, species)`` column by column (species sorted by atomic number, G1 added)."""
        if g3_params is not None and len(g3_params):
            raise ValueError("dscribe's G3 functions (cos κr) are not supported; drop g3_params")
        symbols = [s if isinstance(s, str) else _symbol(s) for s in species]
        symbols = sorted(set(symbols), key=lambda s: atomic_numbers[s])
        radial = [(0.0, 0.0)] + [(eta, r_s) for eta, r_s in (g2_params if g2_params is not None
                                                              else [])]
        angular = [("G4", *p) for p in (g4_params if g4_params is not None else [])]
        angular += [("G5", *p) for p in (g5_params if g5_params is not None else [])]
        return cls(tuple(symbols), r_cut, tuple(radial), tuple(angular))

    def to_dscribe(self) -> Dict:
        """Keyword arguments of ``dscribe.descriptors.ACSF`` giving exactly these features, or a
        ValueError saying why dscribe cannot express this set."""
        problems = []
        if self.cutoff_function != "cosine":
            problems.append("dscribe has the cosine cutoff only")
        if self.angular_cutoff not in (None, self.cutoff):
            problems.append("dscribe has one cutoff for radial and angular functions")
        if list(self.species) != sorted(self.species, key=lambda s: atomic_numbers[s]):
            problems.append("dscribe orders species by atomic number")
        if not self.radial or self.radial[0] != (0.0, 0.0):
            problems.append("dscribe's radial blocks start with G1 = G2(eta=0, r_s=0)")
        kinds = [a[0] for a in self.angular]
        if kinds != sorted(kinds):
            problems.append("dscribe lists all G4 functions before all G5 functions")
        if problems:
            raise ValueError("this set cannot be expressed with dscribe's ACSF: " +
                             "; ".join(problems))
        return {
            "r_cut": self.cutoff,
            "g2_params": [list(p) for p in self.radial[1:]] or None,
            "g4_params": [list(a[1:]) for a in self.angular if a[0] == "G4"] or None,
            "g5_params": [list(a[1:]) for a in self.angular if a[0] == "G5"] or None,
            "species": list(self.species),
        }

    @classmethod
    def ani_like(cls, species: Sequence[str], cutoff: float = 5.2, angular_cutoff: float = 3.5,
                 radial_eta: float = 16.0, num_radial: int = 16, radial_start: float = 0.9,
                 angular_etas: Sequence[float] = (0.01, 0.03, 0.1, 0.3),
                 zetas: Sequence[float] = (1.0, 2.0, 4.0, 8.0), lambdas=(1.0, -1.0),
                 cutoff_function: str = "cosine") -> "SymmetryFunctionSet":
        """An ANI-like set: TorchANI's radial terms (η = EtaR, r_s = ShfR = linspace(start,
        cutoff, num_radial, endpoint=False)) and a G4 grid η × ζ × λ with the angular cutoff.
        The defaults have 16 + 32 = 48 features per species (pair) block, as ANI-1x's 16 radial
        and 4 × 8 angular terms."""
        shifts = [radial_start + k * (cutoff - radial_start) / num_radial
                  for k in range(num_radial)]
        radial = tuple((radial_eta, r_s) for r_s in shifts)
        angular = tuple(("G4", eta, zeta, lam) for eta in angular_etas for zeta in zetas
                        for lam in lambdas)
        return cls(tuple(species), cutoff, radial, angular, angular_cutoff, cutoff_function)

    # -- computing -----------------------------------------------------------------------------

    def compute(self, species, edge_index, edge_vectors, centres=None,
                derivatives: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(descriptors[n_centres, F], dG[n_edges, F, 3] or None) as float64 numpy arrays.

        species: species index per atom (into ``self.species``); edge_index (2, E) and
        edge_vectors (E, 3) a full edge list (r_j − r_i + shift); centres: atoms to describe
        (default: all). dG[e] = ∂G_{centre(e)}/∂edge_vectors[e]; rows of other edges are zero.
        """
        return self._kernel.compute(species, edge_index, edge_vectors, centres, derivatives)

    def gradient(self, species, edge_index, edge_vectors, dE_dG, centres=None) -> np.ndarray:
        """g_e = Σ_f dE_dG[centre(e), f] ∂G_{centre(e), f}/∂r_e for every edge, without storing
        dG (the derivatives are recomputed one centre at a time)."""
        return self._kernel.gradient(species, edge_index, edge_vectors, dE_dG, centres)

    def contract(self, species, edge_index, derivatives, dE_dG, centres=None) -> np.ndarray:
        """The same g_e from stored derivatives ``dG`` (``compute``'s second output)."""
        return self._kernel.contract(species, edge_index, derivatives, dE_dG, centres)


def _symbol(number) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[int(number)]


def _numpy(tensor: torch.Tensor, dtype) -> np.ndarray:
    return tensor.detach().to("cpu", dtype).contiguous().numpy()


class _Descriptors(torch.autograd.Function):
    """G = kernel(edge_vectors); backward: g_e = Σ_f grad_G[centre(e), f] dG[e, f, :].

    The backward is written with differentiable torch operations on grad_G, so that force
    training can differentiate the edge gradient with respect to the network parameters; dG is a
    constant there (second derivatives with respect to positions are not provided).
    """

    @staticmethod
    def forward(ctx, edge_vectors, symmetry_functions, species, edge_index):
        G, dG = symmetry_functions.compute(
            _numpy(species, torch.int64), _numpy(edge_index, torch.int64),
            _numpy(edge_vectors, torch.float64), None, True)
        device, dtype = edge_vectors.device, edge_vectors.dtype
        ctx.save_for_backward(torch.from_numpy(dG).to(device, dtype), edge_index)
        return torch.from_numpy(G).to(device, dtype)

    @staticmethod
    def backward(ctx, grad_G):
        dG, edge_index = ctx.saved_tensors
        weights = grad_G.index_select(0, edge_index[0])  # [E, F]
        gradient = torch.bmm(weights.unsqueeze(1), dG).squeeze(1)  # [E, 3]
        return gradient, None, None, None


def symmetry_function_descriptors(symmetry_functions: SymmetryFunctionSet, species: torch.Tensor,
                                  edge_index: torch.Tensor,
                                  edge_vectors: torch.Tensor) -> torch.Tensor:
    """Descriptors [N, F] of every atom, differentiable with respect to ``edge_vectors``."""
    if edge_vectors.requires_grad and torch.is_grad_enabled():
        return _Descriptors.apply(edge_vectors, symmetry_functions, species, edge_index)
    G, _ = symmetry_functions.compute(_numpy(species, torch.int64),
                                      _numpy(edge_index, torch.int64),
                                      _numpy(edge_vectors, torch.float64), None, False)
    return torch.from_numpy(G).to(edge_vectors.device, edge_vectors.dtype)
