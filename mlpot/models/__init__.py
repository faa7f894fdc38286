"""Trainable model kinds. ``MODEL_KINDS`` maps the ``model_kind`` stored in a model file to its class."""

from .base import AtomicEnergyModel
from .painn import PaiNN
from .behler_parrinello import BehlerParrinello
from .committee import Committee

MODEL_KINDS = {cls.kind: cls for cls in (PaiNN, BehlerParrinello, Committee)}

__all__ = ["AtomicEnergyModel", "PaiNN", "BehlerParrinello", "Committee", "MODEL_KINDS"]
