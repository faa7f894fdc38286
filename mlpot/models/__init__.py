"""Trainable model kinds. ``MODEL_KINDS`` maps the ``model_kind`` stored in a model file to its class."""

from .base import AtomicEnergyModel
from .painn import PaiNN

MODEL_KINDS = {cls.kind: cls for cls in (PaiNN,)}

__all__ = ["AtomicEnergyModel", "PaiNN", "MODEL_KINDS"]
