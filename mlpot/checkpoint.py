"""Training checkpoints: a model kind, its constructor arguments and its weights, in one torch file.

Unlike the deployed model file (``mlpot.model_file``) a checkpoint is for Python only: it rebuilds
the trainable ``torch.nn.Module`` for further training or for ``mlpot export``.
"""

from pathlib import Path
from typing import Union

import torch

from .models import MODEL_KINDS, AtomicEnergyModel

CHECKPOINT_FORMAT = "mlpot-checkpoint"


def build_model(kind: str, hyperparameters: dict) -> AtomicEnergyModel:
    """A fresh model of a registered kind."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind](**hyperparameters)


def save_checkpoint(model: AtomicEnergyModel, path: Union[str, Path], **extra) -> Path:
    """Save the model (and any ``extra`` training state, e.g. optimizer) for later rebuilding."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_kind": model.kind,
        "hyperparameters": model.hyperparameters(),
        "model_state": model.state_dict(),
        **extra,
    }
    torch.save(state, str(path))
    return Path(path)


def load_checkpoint(path: Union[str, Path]) -> tuple:
    """Rebuild the model of a checkpoint; returns ``(model, state dict of the whole checkpoint)``."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise ValueError(f"{str(path)!r} is not a readable mlpot checkpoint ({error})") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not an mlpot checkpoint (save one with "
                         "mlpot.checkpoint.save_checkpoint or `mlpot train`)")
    model = build_model(state["model_kind"], state["hyperparameters"])
    model.load_state_dict(state["model_state"])
    return model, state
