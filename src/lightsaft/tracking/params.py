"""The ``mlflow`` section: where runs are recorded. A recording param: it changes no result, so no
stage depends on it and no training fingerprint holds it (renaming the experiment retrains nothing)."""

from __future__ import annotations

from ..schema import RECORDING, Section, text

MLFLOW = Section("mlflow", {"experiment": ("lightsaft", text())}, kind=RECORDING)
