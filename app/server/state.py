"""What every route shares: the store, the catalog, the scheduler and the generator."""

from __future__ import annotations

from dataclasses import dataclass

from app.server.generate import Generator
from app.server.scheduler import Scheduler, Settings
from app.store.catalog import Catalog
from app.store.store import Store

#: The Ollama API version loam answers to on /api/version, so clients that check it accept loam.
OLLAMA_API_VERSION = "0.12.0"


@dataclass
class ServerState:
    store: Store
    catalog: Catalog
    settings: Settings
    scheduler: Scheduler
    generator: Generator
