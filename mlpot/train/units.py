"""Units of training data: parse what the config states, check it, convert to eV and Å.

Models are trained (and exported) in eV and Å. A data set in other units says so in the config
(``data.units``); forces and stress units default to the energy and length units stated, and a
stated forces or stress unit that contradicts them is an error rather than a silent conversion.
"""

import re
from typing import Dict

from ase import units as ase_units

#: energy units → eV
ENERGY = {
    "ev": 1.0,
    "mev": 1e-3,
    "hartree": ase_units.Hartree,
    "ha": ase_units.Hartree,
    "ry": ase_units.Rydberg,
    "rydberg": ase_units.Rydberg,
    "kcal/mol": ase_units.kcal / ase_units.mol,
    "kj/mol": ase_units.kJ / ase_units.mol,
}
#: length units → Å
LENGTH = {
    "å": 1.0,
    "a": 1.0,
    "ang": 1.0,
    "angstrom": 1.0,
    "bohr": ase_units.Bohr,
    "nm": 10.0,
}
#: absolute pressure units → eV/Å³
PRESSURE = {
    "gpa": ase_units.GPa,
    "kbar": 1e-1 * ase_units.GPa,
    "bar": ase_units.bar,
}


class UnitError(ValueError):
    """A unit that mlpot does not know, or units that contradict each other."""


def _key(unit: str) -> str:
    return re.sub(r"\s+", "", str(unit)).replace("Å", "å").lower().replace("**", "^")


def _energy(unit: str) -> float:
    try:
        return ENERGY[_key(unit)]
    except KeyError:
        raise UnitError(f"unknown energy unit {unit!r}; known: eV, meV, Hartree (Ha), Ry, "
                        "kcal/mol, kJ/mol") from None


def _length(unit: str) -> float:
    try:
        return LENGTH[_key(unit)]
    except KeyError:
        raise UnitError(f"unknown length unit {unit!r}; known: Å (Ang, angstrom), Bohr, "
                        "nm") from None


def _split_derived(unit: str, power: int):
    """``'<energy>/<length>[^power]'`` → (energy unit, length unit), or None if not that form."""
    key = _key(unit)
    suffix = "" if power == 1 else f"^{power}"
    if not key.endswith(suffix) or "/" not in key:
        return None
    body = key[: len(key) - len(suffix)] if suffix else key
    energy, _, length = body.rpartition("/")
    if energy in ENERGY and length in LENGTH:
        return energy, length
    return None


def conversion_factors(units: Dict) -> Dict[str, float]:
    """Factors that take the data's energies, lengths, forces and stresses to eV, Å, eV/Å, eV/Å³.

    ``units`` holds ``energy``, ``length`` and optionally ``forces`` and ``stress`` (``None``:
    derived from energy and length). Raises :class:`UnitError` for unknown or inconsistent units.
    """
    energy_unit, length_unit = units.get("energy", "eV"), units.get("length", "Å")
    energy, length = _energy(energy_unit), _length(length_unit)
    factors = {"energy": energy, "length": length, "forces": energy / length,
               "stress": energy / length**3}
    if units.get("forces") is not None:
        _check_derived("forces", units["forces"], 1, energy_unit, length_unit,
                       "of the form <energy>/<length>, e.g. eV/Å, Hartree/Bohr, kcal/mol/Å")
    stress_unit = units.get("stress")
    if stress_unit is not None:
        if _key(stress_unit) in PRESSURE:
            factors["stress"] = PRESSURE[_key(stress_unit)]
        else:
            _check_derived("stress", stress_unit, 3, energy_unit, length_unit,
                           "<energy>/<length>^3 (e.g. eV/Å^3) nor one of GPa, kbar, bar",
                           " or GPa/kbar")
    return factors


def _check_derived(name: str, unit: str, power: int, energy_unit: str, length_unit: str,
                   form: str, alternatives: str = "") -> None:
    """A stated forces or stress unit must be energy/length^power in the stated units (or the
    same factor): a contradiction is refused rather than silently converted."""
    parts = _split_derived(unit, power)
    if parts is None:
        raise UnitError(f"{name} unit {unit!r} is not {form}")
    if (ENERGY[parts[0]], LENGTH[parts[1]]) != (_energy(energy_unit), _length(length_unit)):
        expected = f"{energy_unit}/{length_unit}" + ("" if power == 1 else f"^{power}")
        raise UnitError(
            f"inconsistent units: energies in {energy_unit} and lengths in {length_unit}, but "
            f"{name} in {unit}; use {expected}{alternatives} (convert the data, or correct "
            "data.units)")
