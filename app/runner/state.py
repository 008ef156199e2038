"""What the HTTP side can see of the runner: options, load progress, and the model once loaded."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.runner.engine import Engine
from app.runner.model import Model
from app.runner.options import RunnerOptions
from app.runner.sampling import SamplingParams


@dataclass
class RunnerState:
    options: RunnerOptions
    progress: float = 0.0
    model: Model | None = None
    engine: Engine | None = None
    started: float = field(default_factory=time.time)  # for /metrics' Process-Start-Time-Unix

    @property
    def defaults(self) -> SamplingParams:
        """A request's settings before its body: llama-server's --temp, --seed and --n-predict."""
        o = self.options
        return SamplingParams(temperature=o.temperature, seed=o.seed, n_predict=o.n_predict)
