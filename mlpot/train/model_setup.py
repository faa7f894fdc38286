"""The model to train: a fresh one of ``model.kind``, or one to fine-tune from a file.

Fine-tuning starts from a deployed model file (``mlpot export``) or a training checkpoint. New
species are added where the kind allows it: a kind may define ``grow_species(species)``;
otherwise every parameter or buffer whose first dimension is the number of species (an embedding
table, per-species shifts) gets rows for the new species and everything else must be unchanged
in shape. Kinds whose parameters depend on the species in another way are refused.

Per-species reference energies (least squares over the training set) and an energy scale go into
the model through ``set_energy_shift_scale(shift, scale)``, with the current values read from the
``energy_shift`` and ``energy_scale`` buffers.
"""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checkpoint import build_model, load_checkpoint
from ..models import AtomicEnergyModel
from .config import ConfigError
from .data import Labelled, energy_std, fit_reference_energies, force_rms


def load_source(path: str) -> Tuple[AtomicEnergyModel, Dict]:
    """The trainable model in a model file or checkpoint, and what it was (for provenance)."""
    from ..model_file import ModelFileError, read_metadata
    from ..models.committee import trainable_model

    if not Path(path).is_file():
        raise FileNotFoundError(f"model.init_from: {path!r} does not exist")
    try:
        kind, metadata = "model file", read_metadata(path).get("metadata", {})
    except ModelFileError:
        kind, metadata = "checkpoint", load_checkpoint(path)[1].get("metadata", {})
    return trainable_model(path), {"path": str(path), "type": kind, "metadata": metadata}


def grow_species(model: AtomicEnergyModel, species: Sequence[str]) -> AtomicEnergyModel:
    """``model`` extended to ``species`` (its own species first, in their order)."""
    old = list(model.species)
    if list(species) == old:
        return model
    if hasattr(model, "grow_species"):
        return model.grow_species(list(species))
    hyperparameters = dict(model.hyperparameters())
    if "species" not in hyperparameters:
        raise ValueError(f"model kind {model.kind!r} cannot add species "
                         f"{sorted(set(species) - set(old))}; train a new model")
    hyperparameters["species"] = list(species)
    grown = build_model(model.kind, hyperparameters).to(next(model.parameters()).dtype)
    old_state, new_state = model.state_dict(), grown.state_dict()
    if set(old_state) != set(new_state):
        raise ValueError(
            f"model kind {model.kind!r} cannot add species {sorted(set(species) - set(old))}: its "
            "layers change with the species list; train a new model with model.species set to "
            "all the elements")
    n_old, n_new = len(old), len(species)
    for name, value in old_state.items():
        target = new_state[name]
        if value.shape == target.shape:
            target.copy_(value)
        elif (value.dim() >= 1 and value.shape[0] == n_old and target.shape[0] == n_new
              and value.shape[1:] == target.shape[1:]):
            target[:n_old].copy_(value)
        else:
            raise ValueError(
                f"model kind {model.kind!r} cannot add species {sorted(set(species) - set(old))}: "
                f"parameter {name!r} changes shape from {tuple(value.shape)} to "
                f"{tuple(target.shape)}; train a new model with model.species set to all elements")
    grown.load_state_dict(new_state)
    return grown


def create_model(config: Dict, data_species: Sequence[str]
                 ) -> Tuple[AtomicEnergyModel, Optional[Dict]]:
    """The model for this run and, when fine-tuning, a description of where it came from."""
    model_config = config["model"]
    wanted = model_config["species"] or list(data_species)
    hyperparameters = dict(model_config["hyperparameters"])
    if model_config["init_from"] is None:
        if "species" in hyperparameters and hyperparameters["species"] != wanted:
            raise ConfigError("give the species once, as model.species (not in hyperparameters)")
        hyperparameters["species"] = wanted
        try:
            return build_model(model_config["kind"], hyperparameters), None
        except TypeError as error:
            raise ConfigError(f"model.hyperparameters do not fit kind {model_config['kind']!r}: "
                              f"{error}") from error

    model, source = load_source(model_config["init_from"])
    if model_config["kind"] not in (None, model.kind):
        raise ConfigError(f"model.kind is {model_config['kind']!r} but {source['path']!r} holds a "
                          f"{model.kind!r} model")
    existing = model.hyperparameters()
    for key, value in hyperparameters.items():
        if key != "species" and existing.get(key) != value:
            raise ConfigError(
                f"fine-tuning keeps the architecture of {source['path']!r}, but "
                f"model.hyperparameters.{key} = {value!r} differs from its {existing.get(key)!r}; "
                "remove it from the config")
    species = list(model.species) + [s for s in wanted if s not in model.species]
    source["species"] = list(model.species)
    return grow_species(model, species), source


def set_normalisation(model: AtomicEnergyModel, config: Dict, train: Sequence[Labelled],
                      finetuning: bool, source_species: Sequence[str] = ()) -> Dict:
    """Reference energies and energy scale from the training set, put into the model."""
    references, scale_mode = config["model"]["reference_energies"], config["model"]["energy_scale"]
    if references == "none" and scale_mode == "none":
        return {}
    if not hasattr(model, "set_energy_shift_scale"):
        raise ConfigError(f"model kind {model.kind!r} has no per-species energy shift/scale; set "
                          "model.reference_energies and model.energy_scale to none")
    species: List[str] = list(model.species)
    shift = model.energy_shift.detach().to(torch.float64).numpy().copy()
    scale = model.energy_scale.detach().to(torch.float64).numpy().copy()
    old = [s for s in species if s in source_species]
    new = [k for k, s in enumerate(species) if s not in source_species]

    if references == "auto":
        references = "keep" if finetuning else "fit"
    if isinstance(references, dict):
        missing = sorted(set(species) - set(references))
        if missing:
            raise ConfigError(f"model.reference_energies lacks {missing}; give every species "
                              f"{species} or use fit")
        shift = np.array([references[s] for s in species])
    elif references == "fit":
        shift = fit_reference_energies(train, species)
    elif references == "keep":
        if not finetuning:
            raise ConfigError("model.reference_energies: keep needs model.init_from")
        fixed = {s: shift[species.index(s)] for s in old}
        shift = fit_reference_energies(train, species, fixed=fixed)

    if scale_mode == "auto":
        scale_mode = "keep" if finetuning else "force_rms"
    if scale_mode == "force_rms":
        value = force_rms(train)
        if value is None:
            value = energy_std(train, species, shift)
        scale = np.full(len(species), value if value > 1e-6 else 1.0)
    elif scale_mode == "energy_std":
        value = energy_std(train, species, shift)
        scale = np.full(len(species), value if value > 1e-6 else 1.0)
    elif scale_mode == "keep":
        if not finetuning:
            raise ConfigError("model.energy_scale: keep needs model.init_from")
        if new and old:
            scale[new] = np.mean([scale[species.index(s)] for s in old])
    elif isinstance(scale_mode, float):
        scale = np.full(len(species), scale_mode)

    dtype = model.energy_shift.dtype
    model.set_energy_shift_scale(torch.tensor(shift, dtype=dtype), torch.tensor(scale, dtype=dtype))
    return {"reference_energies": dict(zip(species, map(float, shift))),
            "energy_scale": dict(zip(species, map(float, scale)))}
