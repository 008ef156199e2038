"""What the HTTP side can see of the runner: options, load progress, and the model once loaded."""

from __future__ import annotations

from dataclasses import dataclass

from app.runner.engine import Engine
from app.runner.model import Model
from app.runner.options import RunnerOptions


@dataclass
class RunnerState:
    options: RunnerOptions
    progress: float = 0.0
    model: Model | None = None
    engine: Engine | None = None
