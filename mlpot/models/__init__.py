"""Trainable model kinds. ``MODEL_KINDS`` maps the ``model_kind`` stored in a model file to its class."""

from .base import AtomicEnergyModel
from .painn import PaiNN
from .behler_parrinello import BehlerParrinello

MODEL_KINDS = {cls.kind: cls for cls in (PaiNN, BehlerParrinello)}

__all__ = ["AtomicEnergyModel", "PaiNN", "BehlerParrinello", "MODEL_KINDS"]
