"""What the API needs at hand, assembled once by the composition root (``chiffon.cli``)."""

from __future__ import annotations

from dataclasses import dataclass

from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.controllers.source import GitSource
from chiffon.settings import Settings
from chiffon.store import Store


@dataclass
class ServerContext:
    settings: Settings
    store: Store
    source: GitSource
    writer: IntentsWriter
