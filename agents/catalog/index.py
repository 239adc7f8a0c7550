"""The catalog index: semantic search over discovered entries, with exact names winning (DESIGN §5).

A :class:`Catalog` belongs to one homelab-infra checkout. It keeps

* the **discovery** (:mod:`.discovery`), re-read when the checkout's
  fingerprint (every file's path, size and mtime) changes — looked at no more
  than every ``check_interval`` seconds — and at least every
  ``refresh_interval`` seconds (an hour) even when it seems unchanged;
* an **embedding** per entry, from all-MiniLM-L6-v2, cached on disk by the
  sha256 of the model id and the entry's text: a restart, or a refresh after
  one playbook changed, embeds only texts it has not seen;
* a **FAISS inner-product index** over the normalised vectors (cosine).

Both the discovery and the embeddings are written under ``cache_dir`` (one
folder per checkout), so a warm start reads two files and never loads the
model until a query needs it.

**Ranking** (:func:`rank`): the score is the cosine similarity plus a
lexical bonus for service names: a query that *is* an entry's name (or one
of its aliases) gets :data:`EXACT_BONUS` — more than any cosine, so an exact
name always wins; a query that contains all of a name's words gets
:data:`NAMED_BONUS`; a partial overlap a little. Ties go to what Chiffon can
run as it is: playbooks, then roles, then compose stacks. A match is
**high** confidence from :data:`HIGH_SCORE`, **medium** from
:data:`CONFIDENT_SCORE`, **low** below; a search whose best match is low says
"no confident match", lists the closest entries and offers a template.

Importing this module imports neither torch nor FAISS; they load on the
first search (:mod:`.embedder`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chiffon.agents.catalog.discovery import (
    DISCOVERY_VERSION,
    Discovery,
    Entry,
    EntryKind,
    discover,
    fingerprint,
    service_name,
)

if TYPE_CHECKING:
    from chiffon.agents.catalog.embedder import Embedder, InnerProductIndex, Vectors
    from chiffon.settings import Settings

__all__ = [
    "CONFIDENT_SCORE",
    "HIGH_SCORE",
    "Catalog",
    "CatalogStats",
    "Confidence",
    "LexicalIndex",
    "Match",
    "SearchResult",
    "catalog_for",
    "catalog_from_settings",
    "confidence_of",
    "lexical_score",
    "rank",
    "template_suggestion",
]

log = logging.getLogger(__name__)

CACHE_VERSION = 1
#: Scores (cosine + lexical bonus) from which a match is high / medium confidence.
HIGH_SCORE = 0.55
CONFIDENT_SCORE = 0.40
EXACT_BONUS = 1.0
NAMED_BONUS = 0.25
PARTIAL_BONUS = 0.10
#: What can run as it is comes first: a playbook, then a role (run through a wrapper or a site
#: playbook), then a compose stack (which Ansible does not run). Added to the score, and the tie-break.
KIND_PRIOR = {EntryKind.PLAYBOOK: 0.03, EntryKind.ROLE: 0.0, EntryKind.COMPOSE: -0.03}
KIND_ORDER = {EntryKind.PLAYBOOK: 0, EntryKind.ROLE: 1, EntryKind.COMPOSE: 2}
MAX_QUERY_CHARS = 500
MAX_LIMIT = 100
DEFAULT_CHECK_INTERVAL = 5.0
DEFAULT_REFRESH_INTERVAL = 3600.0
#: Embeddings kept in the disk cache beyond those in use (old versions of edited entries).
SPARE_EMBEDDINGS = 5_000
_QUERY_CACHE = 256
_STOP_WORDS = frozenset(
    {
        "a", "an", "the", "my", "our", "for", "to", "of", "on", "in", "and", "with", "me", "please", "some",
        "deploy", "install", "run", "set", "setup", "up", "start", "add", "create", "configure", "get",
        "new", "service", "server", "app", "i", "want", "need", "it", "is",
    }
)  # fmt: skip
_TOKENS = re.compile(r"[a-z0-9]+")


class Confidence(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


def confidence_of(score: float) -> Confidence:
    if score >= HIGH_SCORE:
        return Confidence.HIGH
    if score >= CONFIDENT_SCORE:
        return Confidence.MEDIUM
    return Confidence.LOW


@dataclass(frozen=True)
class Match:
    entry: Entry
    score: float  # cosine + lexical bonus; may exceed 1 for an exact name
    semantic: float
    lexical: float
    confidence: Confidence

    def to_wire(self) -> dict[str, Any]:
        wire = self.entry.to_wire()
        wire.pop("text", None)
        return {
            **wire,
            "score": round(self.score, 4),
            "semantic": round(self.semantic, 4),
            "lexical": round(self.lexical, 4),
            "confidence": self.confidence.value,
        }


@dataclass(frozen=True)
class SearchResult:
    query: str
    matches: tuple[Match, ...]
    confident: bool
    message: str = ""
    template: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "confident": self.confident,
            "message": self.message,
            "template": self.template,
            "items": [match.to_wire() for match in self.matches],
        }


# =========================================================================== pure: ranking


def _tokens(text: str) -> list[str]:
    return _TOKENS.findall(text.lower())


def _names(entry: Entry) -> list[tuple[str, list[str]]]:
    """An entry's names (service, own name, aliases), each with its words."""
    names = dict.fromkeys([entry.service, service_name(entry.name), *entry.aliases])
    return [(name, [part for part in name.split("-") if part]) for name in names]


def _bonus(wanted: str, words: set[str], names: Sequence[tuple[str, list[str]]]) -> float:
    best = 0.0
    for name, parts in names:
        if name == wanted:
            return EXACT_BONUS
        if not parts:
            continue
        if all(part in words for part in parts):
            best = max(best, NAMED_BONUS)
        else:
            useful = [p for p in parts if p not in _STOP_WORDS and len(p) > 2]
            if useful:
                best = max(best, PARTIAL_BONUS * sum(p in words for p in useful) / len(useful))
    return best


def lexical_score(query: str, entry: Entry) -> float:
    """The bonus an entry's names earn: exact name, all of a name's words, or some of them."""
    return _bonus(service_name(query), set(_tokens(query)), _names(entry))


class LexicalIndex:
    """:func:`lexical_score` for every entry at once, looking only at entries that share a word."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self._names = [_names(entry) for entry in entries]
        self._by_word: dict[str, set[int]] = {}
        for row, names in enumerate(self._names):
            for name, parts in names:
                for word in {name, *parts}:
                    self._by_word.setdefault(word, set()).add(row)

    def scores(self, query: str) -> dict[int, float]:
        """Row → bonus, for the rows that earn one."""
        wanted, words = service_name(query), set(_tokens(query))
        candidates: set[int] = set(self._by_word.get(wanted, ()))
        for word in words:
            candidates |= self._by_word.get(word, set())
        found = {}
        for row in candidates:
            bonus = _bonus(wanted, words, self._names[row])
            if bonus > 0:
                found[row] = bonus
        return found


def rank(
    query: str,
    entries: Sequence[Entry],
    semantic: Mapping[int, float],
    *,
    limit: int,
    runnable_only: bool = False,
    lexical: Mapping[int, float] | None = None,
) -> list[Match]:
    """Entries by score (cosine from ``semantic``, by row, plus the lexical bonus), best first.

    ``lexical`` (row → bonus, from a :class:`LexicalIndex`) saves scoring every entry's names.
    """
    bonuses = lexical if lexical is not None else LexicalIndex(entries).scores(query)
    matches = []
    for row in set(semantic) | set(bonuses):
        entry = entries[row]
        if runnable_only and not entry.runnable:
            continue
        bonus = bonuses.get(row, 0.0)
        cosine = semantic.get(row, 0.0)
        score = cosine + bonus + KIND_PRIOR[entry.kind]
        matches.append(Match(entry, score, cosine, bonus, confidence_of(score)))
    matches.sort(key=lambda m: (-round(m.score, 6), KIND_ORDER[m.entry.kind], m.entry.path))
    return matches[:limit]


def template_suggestion(query: str) -> str:
    """The ``chiffonctl template new`` command that would write a playbook for what was asked."""
    words = [w for w in _tokens(query) if w not in _STOP_WORDS][:3]
    name = "-".join(words) or "my-service"
    return f"chiffonctl template new compose-service --name {name} --image IMAGE --port PORT"


def _text_key(model_id: str, text: str) -> str:
    return hashlib.sha256(f"{model_id}\0{text}".encode()).hexdigest()


# =========================================================================== the catalog


@dataclass
class CatalogStats:
    """What a catalog did in this process: tests and the bench read these."""

    discoveries: int = 0
    cache_loads: int = 0
    embedded: int = 0  # texts the model encoded for entries (queries not counted)
    index_builds: int = 0
    queries: int = 0


@dataclass
class _Snapshot:
    fingerprint: str
    discovered_at: float  # wall clock, seconds
    discovery: Discovery
    index: InnerProductIndex | None = None
    vectors: Vectors | None = None
    lexical: LexicalIndex | None = None
    queries: OrderedDict[tuple[str, int, bool], SearchResult] = field(default_factory=OrderedDict)


class Catalog:
    """The catalog of one homelab-infra checkout; thread-safe (:func:`catalog_for`)."""

    def __init__(
        self,
        root: Path,
        cache_dir: Path,
        *,
        embedder: Embedder | None = None,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(os.path.realpath(root))
        key = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        self.cache_dir = Path(cache_dir) / key
        self.check_interval = check_interval
        self.refresh_interval = refresh_interval
        self.stats = CatalogStats()
        self._embedder = embedder
        self._clock = clock
        self._lock = threading.RLock()
        self._snapshot: _Snapshot | None = None
        self._checked_at = float("-inf")

    # -- public ---------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from chiffon.agents.catalog.embedder import shared_embedder

            self._embedder = shared_embedder()
        return self._embedder

    def discovery(self) -> Discovery:
        """The entries as the checkout stands (refreshed as the class says); never loads the model."""
        return self._current().discovery

    def entries(self) -> list[Entry]:
        return list(self.discovery().entries)

    def warm(self) -> None:
        """Make the index ready (from the disk cache when it can) without a query."""
        self._indexed()

    def search(self, query: str, limit: int = 5, *, runnable_only: bool = False) -> SearchResult:
        """The ``limit`` best entries for ``query``; says so when none is a confident match."""
        query = " ".join(query.split())
        if not query:
            raise ValueError("the query is empty; say what you are looking for, e.g. 'uptime monitoring'")
        if len(query) > MAX_QUERY_CHARS:
            raise ValueError(f"the query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
        snapshot = self._indexed()
        key = (query.lower(), limit, runnable_only)
        with self._lock:
            cached = snapshot.queries.get(key)
            if cached is not None:
                snapshot.queries.move_to_end(key)
                return cached
            self.stats.queries += 1
        result = self._search(snapshot, query, limit, runnable_only)
        with self._lock:
            snapshot.queries[key] = result
            while len(snapshot.queries) > _QUERY_CACHE:
                snapshot.queries.popitem(last=False)
        return result

    def refresh(self) -> bool:
        """Look at the checkout now; True when the entries were read again."""
        with self._lock:
            self._checked_at = float("-inf")
            before = self._snapshot
            return self._current() is not before

    # -- search ---------------------------------------------------------------------------------

    def _search(self, snapshot: _Snapshot, query: str, limit: int, runnable_only: bool) -> SearchResult:
        entries = snapshot.discovery.entries
        semantic: dict[int, float] = {}
        lexical = snapshot.lexical.scores(query) if snapshot.lexical is not None else {}
        if entries and snapshot.index is not None and snapshot.vectors is not None:
            vector = self.embedder.encode([query])[0]
            # Rows 2i and 2i+1 are entry i's text and summary; an entry scores its better row.
            # Enough neighbours that filtering (runnable only) still leaves ``limit`` entries.
            for row, score in snapshot.index.search(vector, max(limit * 8, 64)):
                entry_row = row // 2
                semantic[entry_row] = max(score, semantic.get(entry_row, -1.0))
            # Entries named in the query but not among the neighbours still get their cosine.
            for row in lexical:
                if row not in semantic:
                    pair = snapshot.vectors[2 * row : 2 * row + 2] @ vector
                    semantic[row] = float(pair.max())
        matches = rank(query, entries, semantic, limit=limit, runnable_only=runnable_only, lexical=lexical)
        confident = bool(matches) and matches[0].confidence is not Confidence.LOW
        if confident:
            return SearchResult(query, tuple(matches), True)
        template = template_suggestion(query)
        closest = "; the closest are listed" if matches else ""
        message = (
            f'no confident match for "{query}" in homelab-infra{closest}. To write a new playbook: {template}'
        )
        return SearchResult(query, tuple(matches), False, message, template)

    # -- freshness --------------------------------------------------------------------------------

    def _current(self) -> _Snapshot:
        with self._lock:
            now = self._clock()
            snapshot = self._snapshot
            if snapshot is not None and now - self._checked_at < self.check_interval:
                return snapshot
            current = fingerprint(self.root)
            self._checked_at = now

            def fresh(candidate: _Snapshot) -> bool:
                age = now - candidate.discovered_at
                return candidate.fingerprint == current and age < self.refresh_interval

            if snapshot is not None and fresh(snapshot):
                return snapshot
            if snapshot is None:
                stored = self._load_discovery()
                if stored is not None and fresh(stored):
                    self.stats.cache_loads += 1
                    self._snapshot = stored
                    return stored
            found = discover(self.root)
            self.stats.discoveries += 1
            for warning in found.warnings:
                log.debug("catalog: %s", warning)
            self._snapshot = _Snapshot(current, now, found)
            self._save_discovery(self._snapshot)
            return self._snapshot

    def _indexed(self) -> _Snapshot:
        with self._lock:
            snapshot = self._current()
            if snapshot.index is None:
                vectors = self._vectors(snapshot.discovery.entries)
                from chiffon.agents.catalog.embedder import InnerProductIndex

                snapshot.vectors = vectors
                snapshot.lexical = LexicalIndex(snapshot.discovery.entries)
                snapshot.index = InnerProductIndex(vectors)
                self.stats.index_builds += 1
            return snapshot

    # -- disk cache --------------------------------------------------------------------------------

    def _vectors(self, entries: Sequence[Entry]) -> Vectors:
        """One row per entry: from the disk cache by text hash, the rest embedded now and saved."""
        import numpy as np

        embedder = self.embedder
        # Two rows per entry: its full text, then its summary (see _entry_rows).
        texts_in_order = [text for entry in entries for text in (entry.text, entry.summary or entry.text)]
        keys = [_text_key(embedder.model_id, text) for text in texts_in_order]
        known_keys, known = self._load_embeddings(embedder.model_id, embedder.dimension)
        rows = {key: index for index, key in enumerate(known_keys)}
        missing = list(dict.fromkeys(key for key in keys if key not in rows))
        texts = dict(zip(keys, texts_in_order, strict=True))
        if missing:
            fresh = embedder.encode([texts[key] for key in missing])
            self.stats.embedded += len(missing)
            start = len(known_keys)
            known_keys = [*known_keys, *missing]
            known = np.vstack([known, fresh]) if known.size else fresh
            rows.update({key: start + offset for offset, key in enumerate(missing)})
            in_use = set(keys)
            spare = [k for k in known_keys if k not in in_use][-SPARE_EMBEDDINGS:]
            kept = [*spare, *dict.fromkeys(keys)]
            self._save_embeddings(embedder.model_id, kept, known[[rows[k] for k in kept]])
        if not keys:
            return np.zeros((0, embedder.dimension), dtype=np.float32)
        return np.ascontiguousarray(known[[rows[key] for key in keys]], dtype=np.float32)

    def _load_embeddings(self, model_id: str, dimension: int) -> tuple[list[str], Vectors]:
        import numpy as np

        empty = np.zeros((0, dimension), dtype=np.float32)
        try:
            meta = json.loads((self.cache_dir / "embeddings.json").read_text())
            vectors = np.load(self.cache_dir / "embeddings.npy", allow_pickle=False)
        except (OSError, ValueError):
            return [], empty
        keys = meta.get("keys") if isinstance(meta, dict) else None
        if (
            meta.get("version") != CACHE_VERSION
            or meta.get("model") != model_id
            or not isinstance(keys, list)
            or vectors.ndim != 2
            or vectors.shape != (len(keys), dimension)
        ):
            return [], empty
        return [str(k) for k in keys], vectors.astype(np.float32, copy=False)

    def _save_embeddings(self, model_id: str, keys: list[str], vectors: Vectors) -> None:
        import numpy as np

        def write_vectors(path: Path) -> None:
            with open(path, "wb") as handle:
                np.save(handle, vectors, allow_pickle=False)

        # Vectors first, then the keys that describe them: a reader that sees new keys sees new vectors;
        # a torn pair (a crash between) fails the shape check and is rebuilt.
        self._write(self.cache_dir / "embeddings.npy", write_vectors)
        meta = {"version": CACHE_VERSION, "model": model_id, "keys": keys}
        self._write(self.cache_dir / "embeddings.json", lambda p: p.write_text(json.dumps(meta)))

    def _load_discovery(self) -> _Snapshot | None:
        try:
            data = json.loads((self.cache_dir / "discovery.json").read_text())
            if data.get("version") != [CACHE_VERSION, DISCOVERY_VERSION] or data.get("root") != str(
                self.root
            ):
                return None
            return _Snapshot(
                fingerprint=str(data["fingerprint"]),
                discovered_at=float(data["discoveredAt"]),
                discovery=Discovery.from_wire(data["discovery"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_discovery(self, snapshot: _Snapshot) -> None:
        data = {
            "version": [CACHE_VERSION, DISCOVERY_VERSION],
            "root": str(self.root),
            "fingerprint": snapshot.fingerprint,
            "discoveredAt": snapshot.discovered_at,
            "discovery": snapshot.discovery.to_wire(),
        }
        self._write(self.cache_dir / "discovery.json", lambda p: p.write_text(json.dumps(data)))

    def _write(self, path: Path, writer: Callable[[Path], object]) -> None:
        """Write through a temp file and rename; a cache that cannot be written is only slower."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            os.close(handle)
            try:
                writer(Path(temp))
                Path(temp).replace(path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    Path(temp).unlink()
        except OSError as error:
            log.warning("catalog cache %s not written: %s", path, error)


_catalogs: dict[tuple[str, str], Catalog] = {}
_catalogs_lock = threading.Lock()


def catalog_for(root: Path, cache_dir: Path, **options: Any) -> Catalog:
    """The process's catalog of ``root``: the API and the controller of ``chiffon up`` share one."""
    key = (os.path.realpath(root), os.path.realpath(cache_dir))
    with _catalogs_lock:
        found = _catalogs.get(key)
        if found is None:
            found = _catalogs[key] = Catalog(root, cache_dir, **options)
        return found


def catalog_from_settings(settings: Settings, root: Path | None = None) -> Catalog:
    """The catalog of the configured homelab-infra checkout (or ``root``), cached where settings say."""
    return catalog_for(
        root or settings.resolved_infra_repo,
        settings.resolved_catalog_cache_dir,
        refresh_interval=settings.catalog_refresh_interval,
    )
