"""The training configuration: defaults, YAML file, ``--set`` overrides, validation.

A config is a plain nested dict (so that it can be saved as YAML next to the results and inside
checkpoints). ``load_config`` merges a YAML file and ``key.sub=value`` overrides onto
``DEFAULTS`` and checks every value, so typos and wrong types fail before any data is read.
docs/training.md is the reference for every key.
"""

import copy
import difflib
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

DEFAULTS: Dict[str, Any] = {
    "model": {
        "kind": None,                # e.g. painn (see mlpot.models.MODEL_KINDS)
        "species": None,             # None: the elements of the training data, by atomic number
        "hyperparameters": {},       # constructor arguments of the kind (cutoff, sizes, ...)
        "init_from": None,           # fine-tuning: a model file (mlpot export) or a checkpoint
        "reference_energies": "auto",  # auto | fit | keep | none | {symbol: eV}
        "energy_scale": "auto",      # auto | force_rms | energy_std | keep | number (eV)
    },
    "data": {
        "train": None,               # file or list of files (extxyz, ASE db, anything ase.io reads)
        "validation": None,          # optional: file(s); otherwise split off the training files
        "test": None,
        "index": ":",                # ase.io index (or ASE db query) applied to every file
        "split": {"validation": 0.1, "test": 0.1, "seed": 0},
        "keys": {"energy": "energy", "forces": "forces", "stress": "stress", "virial": "virial"},
        "units": {"energy": "eV", "length": "Å", "forces": None, "stress": None},
        "reference_method": None,    # e.g. "PBE, VASP 6.4, 520 eV" (goes into the model file)
    },
    "training": {
        "seed": 0,
        "epochs": 100,
        "batch_size": 8,
        "eval_batch_size": None,     # None: batch_size
        "dtype": "float32",
        "device": "cpu",
        "loss": {"energy": 1.0, "forces": 10.0, "stress": 0.0, "type": "mse", "huber_delta": 0.01},
        "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999]},
        "scheduler": {"name": "plateau", "factor": 0.5, "patience": 10, "threshold": 1e-4,
                      "min_lr": 1e-6, "warmup_epochs": 0},
        "ema_decay": 0.99,           # 0 or None: no EMA
        "early_stopping": {"patience": 30, "min_delta": 0.0},
        "gradient_clip": 10.0,       # max gradient norm; 0 or None: no clipping
        "checkpoint_every": 1,
        "num_threads": None,         # torch threads per process; None: leave torch's choice
        "committee": {"members": 1, "bootstrap": False},  # members > 1: a committee (ensemble)
    },
    "output": {
        "directory": "run",
        "export": "model.pt",        # written from the best EMA weights; None: no export
        "export_dtype": "float64",
        "progress": "auto",          # auto (only on a terminal) | true | false
        "plots": True,
    },
}

#: dict-valued keys whose contents are free-form (not checked against DEFAULTS)
FREE_FORM = {("model", "hyperparameters"), ("model", "reference_energies")}
#: keys holding paths, resolved relative to the config file's folder
PATH_KEYS = [("data", "train"), ("data", "validation"), ("data", "test"), ("model", "init_from"),
             ("output", "directory")]
#: keys that may differ between a checkpoint's config and the one used to resume it exactly
RESUMABLE_CHANGES = {"training.epochs", "training.early_stopping.patience",
                     "training.early_stopping.min_delta", "training.checkpoint_every",
                     "training.num_threads", "output.progress", "output.plots", "output.export",
                     "output.export_dtype"}


class ConfigError(ValueError):
    """A config that cannot be used as it is; the message says which key and why."""


def load_config(path: Optional[str], overrides: Sequence[str] = (),
                base: Optional[Dict] = None) -> Dict:
    """The validated config from a YAML file (or ``base``) plus ``KEY.SUB=VALUE`` overrides.

    Relative paths in the file are taken relative to the file's folder; those in overrides
    relative to the current directory.
    """
    import yaml

    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{str(path)!r} is not valid YAML: {error}") from error
        if not isinstance(user, dict):
            raise ConfigError(f"{str(path)!r} must hold a mapping "
                              "(model:, data:, training:, output:)")
        _resolve_paths(user, path.resolve().parent)
        config = merge(DEFAULTS, user)
    else:
        config = copy.deepcopy(base if base is not None else DEFAULTS)
    for item in overrides:
        key, value = parse_override(item)
        override = _nested(key, value)
        _resolve_paths(override, Path.cwd())
        config = merge(config, override)
    return validate(config)


def parse_override(item: str):
    """``'training.optimizer.lr=1e-3'`` → ``('training.optimizer.lr', 0.001)`` (values are YAML)."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. training.epochs=50)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an invalid key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({error})") from error
    return key, value


def _nested(key: str, value) -> Dict:
    result: Dict = {}
    node = result
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return result


def merge(defaults: Dict, user: Dict, prefix: tuple = ()) -> Dict:
    """``user`` over ``defaults``; unknown keys are errors (with a did-you-mean)."""
    result = copy.deepcopy(defaults)
    for key, value in user.items():
        where = prefix + (key,)
        if prefix in FREE_FORM:
            result[key] = copy.deepcopy(value)
            continue
        if key not in defaults:
            known = sorted(defaults)
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(
                f"unknown config key {'.'.join(map(str, where))!r}"
                + (f" (did you mean {'.'.join(map(str, prefix + (hint[0],)))!r}?)" if hint else "")
                + f"; known keys here: {', '.join(known)}")
        if isinstance(defaults[key], dict) and where not in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"config key {'.'.join(where)!r} must be a mapping, got {value!r}")
            result[key] = merge(defaults[key], value, where)
        elif where in FREE_FORM and isinstance(defaults[key], dict) and isinstance(value, dict):
            result[key] = {**defaults[key], **copy.deepcopy(value)}
        else:
            result[key] = copy.deepcopy(value)
    return result


def map_paths(config: Dict, function) -> Dict:
    """``function`` applied to every path of ``config`` (``PATH_KEYS``; lists element-wise,
    absent paths skipped), in place."""
    for section, key in PATH_KEYS:
        node = config.get(section)
        if not isinstance(node, dict) or node.get(key) is None:
            continue
        value = node[key]
        if isinstance(value, (list, tuple)):
            node[key] = [function(str(v)) for v in value]
        else:
            node[key] = function(str(value))
    return config


def _resolve_paths(config: Dict, folder: Path) -> None:
    """Paths relative to ``folder`` made absolute (and normalised), in place."""
    map_paths(config, lambda path: os.path.normpath(str(folder / path)))


def normalise_paths(config: Dict) -> Dict:
    """``a/run/../data/x`` → ``a/data/x`` for the path keys, in place: the run folder's config
    copy names files relative to itself, and resuming from it must compare equal to the
    original config's paths."""
    return map_paths(config, os.path.normpath)


def flatten(config: Dict, prefix: str = "") -> Dict[str, Any]:
    """``{'a': {'b': 1}}`` → ``{'a.b': 1}`` (free-form mappings stay whole)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and tuple(name.split(".")) not in FREE_FORM:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# ---------------------------------------------------------------------------------- validation


def _number(config: Dict, key: str, minimum=None, maximum=None, integer=False, optional=False,
            exclusive_minimum=False):
    section, *rest = key.split(".")
    node = config[section]
    for part in rest[:-1]:
        node = node[part]
    value = node[rest[-1]]
    if value is None and optional:
        return None
    if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
        relation = ">" if exclusive_minimum else "≥"
        raise ConfigError(f"{key} must be {relation} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key} must be ≤ {maximum}, got {value}")
    node[rest[-1]] = value
    return value


def _choice(config: Dict, key: str, choices: List[str]):
    section, *rest = key.split(".")
    node = config[section]
    for part in rest[:-1]:
        node = node[part]
    value = node[rest[-1]]
    value = str(value).lower() if value is not None else "none"
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {node[rest[-1]]!r}")
    node[rest[-1]] = value
    return value


def _files(value, key: str, required: bool) -> Optional[List[str]]:
    if value is None:
        if required:
            raise ConfigError(f"{key} is required: the training data file(s)")
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a file name or a list of file names, got {value!r}")
    return value


def validate(config: Dict) -> Dict:
    """Check and normalise every value in place; returns ``config``."""
    model, data, training, output = (config[k] for k in ("model", "data", "training", "output"))

    if model["kind"] is None and model["init_from"] is None:
        from ..models import MODEL_KINDS

        raise ConfigError(f"model.kind is required (one of {', '.join(sorted(MODEL_KINDS))}), "
                          "unless model.init_from names a model to fine-tune")
    if model["kind"] is not None and not isinstance(model["kind"], str):
        raise ConfigError(f"model.kind must be a string, got {model['kind']!r}")
    if model["species"] is not None:
        species = model["species"]
        if isinstance(species, str):
            species = species.replace(",", " ").split()
        from ase.data import atomic_numbers

        if (not isinstance(species, list) or not species
                or any(s not in atomic_numbers for s in species)
                or len(set(species)) != len(species)):
            raise ConfigError(f"model.species must be a list of distinct chemical symbols, got "
                              f"{model['species']!r}")
        model["species"] = list(species)
    if not isinstance(model["hyperparameters"], dict):
        raise ConfigError("model.hyperparameters must be a mapping of the kind's constructor "
                          "arguments (e.g. cutoff: 5.0)")
    references = model["reference_energies"]
    if isinstance(references, dict):
        try:
            model["reference_energies"] = {str(k): float(v) for k, v in references.items()}
        except (TypeError, ValueError) as error:
            raise ConfigError("model.reference_energies must map symbols to energies in eV") \
                from error
    else:
        _choice(config, "model.reference_energies", ["auto", "fit", "keep", "none"])
    scale = model["energy_scale"]
    modes = ("auto", "force_rms", "energy_std", "keep", "none")
    if isinstance(scale, str) and scale.lower() in modes:
        model["energy_scale"] = scale.lower()
    else:
        _number(config, "model.energy_scale", minimum=0.0, exclusive_minimum=True)

    data["train"] = _files(data["train"], "data.train", required=True)
    data["validation"] = _files(data["validation"], "data.validation", required=False)
    data["test"] = _files(data["test"], "data.test", required=False)
    if not isinstance(data["index"], (str, int)):
        raise ConfigError(f"data.index must be an ase.io index string such as ':' or '::2', got "
                          f"{data['index']!r}")
    data["index"] = str(data["index"])
    for part in ("validation", "test"):
        _number(config, f"data.split.{part}", minimum=0.0)
    _number(config, "data.split.seed", integer=True)
    fractions = [data["split"][p] for p in ("validation", "test") if data["split"][p] < 1]
    if sum(fractions) >= 1:
        raise ConfigError("data.split.validation + data.split.test must leave some training data "
                          f"(fractions {data['split']['validation']}, {data['split']['test']})")
    for key, value in data["keys"].items():
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"data.keys.{key} must be a key name or null, got {value!r}")
    from .units import conversion_factors

    conversion_factors(data["units"])  # raises UnitError (a ValueError) for bad units
    if data["reference_method"] is not None:
        data["reference_method"] = str(data["reference_method"])

    _number(config, "training.seed", integer=True)
    _number(config, "training.epochs", minimum=0, integer=True)
    _number(config, "training.batch_size", minimum=1, integer=True)
    _number(config, "training.eval_batch_size", minimum=1, integer=True, optional=True)
    _choice(config, "training.dtype", ["float32", "float64"])
    if not isinstance(training["device"], str):
        raise ConfigError("training.device must be a string such as 'cpu', got "
                          f"{training['device']!r}")
    for term in ("energy", "forces", "stress"):
        _number(config, f"training.loss.{term}", minimum=0.0)
    _choice(config, "training.loss.type", ["mse", "huber"])
    _number(config, "training.loss.huber_delta", minimum=0.0, exclusive_minimum=True)
    if training["loss"]["energy"] == training["loss"]["forces"] == training["loss"]["stress"] == 0:
        raise ConfigError("training.loss: at least one of energy, forces, stress needs a "
                          "weight > 0")
    _choice(config, "training.optimizer.name", ["adam", "adamw"])
    _number(config, "training.optimizer.lr", minimum=0.0, exclusive_minimum=True)
    _number(config, "training.optimizer.weight_decay", minimum=0.0)
    betas = training["optimizer"]["betas"]
    try:
        betas = [float(b) for b in betas]
        assert len(betas) == 2 and all(0 <= b < 1 for b in betas)
    except (TypeError, ValueError, AssertionError):
        raise ConfigError(f"training.optimizer.betas must be two numbers in [0, 1), got {betas!r}")
    training["optimizer"]["betas"] = betas
    _choice(config, "training.scheduler.name", ["plateau", "cosine", "none"])
    _number(config, "training.scheduler.factor", minimum=0.0, maximum=1.0, exclusive_minimum=True)
    _number(config, "training.scheduler.patience", minimum=0, integer=True)
    _number(config, "training.scheduler.threshold", minimum=0.0)
    _number(config, "training.scheduler.min_lr", minimum=0.0)
    _number(config, "training.scheduler.warmup_epochs", minimum=0, integer=True)
    if training["ema_decay"] is None:
        training["ema_decay"] = 0.0
    _number(config, "training.ema_decay", minimum=0.0, maximum=1.0)
    if training["ema_decay"] >= 1.0:
        raise ConfigError("training.ema_decay must be < 1 (0 disables the EMA)")
    _number(config, "training.early_stopping.patience", minimum=0, integer=True, optional=True)
    _number(config, "training.early_stopping.min_delta", minimum=0.0)
    if training["gradient_clip"] is None:
        training["gradient_clip"] = 0.0
    _number(config, "training.gradient_clip", minimum=0.0)
    _number(config, "training.checkpoint_every", minimum=1, integer=True)
    _number(config, "training.num_threads", minimum=1, integer=True, optional=True)
    training.setdefault("committee", copy.deepcopy(DEFAULTS["training"]["committee"]))
    _number(config, "training.committee.members", minimum=1, integer=True)
    if not isinstance(training["committee"]["bootstrap"], bool):
        raise ConfigError("training.committee.bootstrap must be true or false, got "
                          f"{training['committee']['bootstrap']!r}")

    if not isinstance(output["directory"], str):
        raise ConfigError(f"output.directory must be a path, got {output['directory']!r}")
    if output["export"] is not None and not isinstance(output["export"], str):
        raise ConfigError(f"output.export must be a file name or null, got {output['export']!r}")
    _choice(config, "output.export_dtype", ["float32", "float64"])
    progress = output["progress"]
    if progress not in (True, False) and str(progress).lower() != "auto":
        raise ConfigError(f"output.progress must be auto, true or false, got {progress!r}")
    output["progress"] = progress if progress in (True, False) else "auto"
    if not isinstance(output["plots"], bool):
        raise ConfigError(f"output.plots must be true or false, got {output['plots']!r}")
    return config


def differences(old: Dict, new: Dict) -> List[str]:
    """Flattened keys whose values differ between two configs."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
