"""Sparse BM25 vectors computed in process: the default embedder, no model and no download.

BM25 scores a document ``d`` for a query ``q`` as::

    sum over terms t in q:  IDF(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))

We split that product across the two sides of a sparse dot product:

* a document's value for term ``t`` is the term-frequency saturation factor
  (everything but IDF);
* a query's value is 1.0 per unique term;
* IDF is applied by Qdrant at query time (``Modifier.IDF`` on the sparse vector),
  from live document frequencies, so it stays right as documents come and go.

``avgdl`` (the corpus' mean document length) is a fixed assumption, not
measured: a point's values are written once and Qdrant cannot rescale them when
the corpus changes. 256 terms is roughly one 300-400 token chunk; chunks of
that size get no length penalty, longer ones a mild one.

Tokens are Unicode words. Identifiers are code-aware: ``parse_config`` and
``parseConfig`` yield ``parse_config`` / ``parseconfig`` as a whole (so an exact
identifier query ranks its definition first) plus their stemmed parts ``pars``
and ``config`` (so prose about "parsing the config" matches too). Terms are
hashed to uint32 indices with blake2b, stable across processes and versions,
unlike Python's salted ``hash()``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import chain, pairwise

import snowballstemmer

from daveloper.documents.model import SparseVector, Vectors

__all__ = ["STOP_WORDS", "BM25Embedder", "term_index", "tokenize"]

_WORD = re.compile(r"\w+")
#: Longer "words" are base64, hashes or minified code: noise, and each a fresh index.
_MAX_TERM_CHARS = 64
#: Above this many characters a batch is tokenised in a worker thread so the event loop keeps serving.
_THREAD_THRESHOLD = 20_000
_STEM_CACHE_LIMIT = 200_000
_WORD_CACHE_LIMIT = 200_000

_STOP_WORDS_TEXT = """
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not of off on once only or other ought our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves s t d ll m re ve don doesn didn isn aren wasn weren
"""
#: English stop words (the Snowball list, lowercased, apostrophes dropped as the tokenizer does).
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


def _identifier_parts(word: str) -> list[str]:
    """Split ``snake_case``, ``camelCase``, ``HTTPServer2`` into ``[snake, case]``, ``[HTTP, Server, 2]``.

    Works on any script's letters (``str.isupper``), not only ASCII.
    """
    parts: list[str] = []
    for piece in word.split("_"):
        start = 0
        for i in range(1, len(piece)):
            prev, cur = piece[i - 1], piece[i]
            nxt = piece[i + 1] if i + 1 < len(piece) else ""
            boundary = (
                (prev.islower() and cur.isupper())
                or (prev.isdigit() != cur.isdigit())
                # the last capital of an acronym starts the next word: HTTP|Server
                or (prev.isupper() and cur.isupper() and nxt.islower())
            )
            if boundary:
                parts.append(piece[start:i])
                start = i
        if piece:
            parts.append(piece[start:])
    return parts


class _Stemmer(threading.local):
    """A Snowball stemmer per thread (its objects keep state while stemming), sharing one cache."""

    cache: dict[str, str] = {}

    def __init__(self) -> None:
        self._stemmer = snowballstemmer.stemmer("english")

    def stem(self, word: str) -> str:
        stemmed = self.cache.get(word)
        if stemmed is None:
            stemmed = str(self._stemmer.stemWord(word))
            if len(self.cache) >= _STEM_CACHE_LIMIT:
                self.cache.clear()
            self.cache[word] = stemmed
        return stemmed


def _word_terms(word: str, stemmer: _Stemmer) -> Iterator[str]:
    if len(word) > _MAX_TERM_CHARS:
        return
    # Most words are plain (lower case, capitalised or an acronym): nothing to split.
    plain = word.isalpha() and (word[1:].islower() or word.isupper())
    parts = [word] if plain else _identifier_parts(word)
    if len(parts) > 1:
        whole = word.strip("_").lower()
        if len(whole) > 1:
            yield whole
    for part in parts:
        lowered = part.lower()
        if len(lowered) < 2 or lowered in STOP_WORDS:
            continue
        yield stemmer.stem(lowered)


def _terms(text: str, stemmer: _Stemmer) -> Iterator[str]:
    for word in _WORD.findall(text):
        yield from _word_terms(word, stemmer)


def tokenize(text: str) -> list[str]:
    """The BM25 terms of ``text``, in order, repeats kept (exposed for tests and debugging)."""
    return list(_terms(text, _Stemmer()))


def term_index(term: str) -> int:
    """The sparse index of ``term``: the first 4 bytes of its blake2b digest, as uint32."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "little")


class BM25Embedder:
    """Sparse BM25 term vectors; implements :class:`~daveloper.documents.model.Embedder`."""

    name = "bm25"
    dense_size: int | None = None

    def __init__(self, *, k1: float = 1.2, b: float = 0.75, avgdl: float = 256.0) -> None:
        if k1 <= 0 or not 0 <= b <= 1 or avgdl <= 0:
            raise ValueError("BM25 needs k1 > 0, 0 <= b <= 1 and avgdl > 0")
        self.k1 = k1
        self.b = b
        self.avgdl = avgdl
        self._stemmer = _Stemmer()
        #: word → the sparse indices of its terms, in order
        self._word_indices: dict[str, tuple[int, ...]] = {}

    def _indices(self, text: str) -> list[tuple[int, ...]]:
        """The sparse indices of each word of ``text``, in order."""
        words = _WORD.findall(text)
        known = self._word_indices
        # Words repeat (Zipf): split, stem and hash each one once, then look it up (in C).
        try:
            return list(map(known.__getitem__, words))
        except KeyError:
            for word in words:
                if word not in known:
                    if len(known) >= _WORD_CACHE_LIMIT:
                        known.clear()
                    known[word] = tuple(term_index(term) for term in _word_terms(word, self._stemmer))
            return [known[word] for word in words]

    def _counts(self, text: str) -> tuple[Counter[int], int]:
        # Two terms hashing to one index (rare at 2**32) simply count together.
        counts = Counter(chain.from_iterable(self._indices(text)))
        return counts, counts.total()

    def document_vector(self, text: str) -> SparseVector:
        """The saturated term frequencies of one document (IDF comes from Qdrant)."""
        counts, length = self._counts(text)
        norm = self.k1 * (1 - self.b + self.b * length / self.avgdl)
        indices = sorted(counts)
        values = tuple(counts[i] * (self.k1 + 1) / (counts[i] + norm) for i in indices)
        return SparseVector(indices=tuple(indices), values=values)

    def document_rows(self, texts: Sequence[str]) -> list[tuple[bytes, bytes]]:
        """:meth:`document_vector` of each text, as its indices and values in machine layout
        (``array('I')`` and ``array('d')`` bytes): one vectorised pass over the whole batch instead
        of a counter, a sort and a tuple of floats per text (the document worker's path)."""
        import numpy as np  # only the document worker needs it: the server starts without

        flat: list[int] = []
        lengths: list[int] = []
        for text in texts:
            before = len(flat)
            flat.extend(chain.from_iterable(self._indices(text)))
            lengths.append(len(flat) - before)
        # Sorting (text, index) keys groups each text's terms in index order and counts repeats.
        owner = np.repeat(np.arange(len(texts), dtype=np.uint64), lengths)
        keys, counts = np.unique((owner << np.uint64(32)) | np.array(flat, dtype=np.uint64), return_counts=True)
        text_of = (keys >> np.uint64(32)).astype(np.intp)
        indices = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32).tobytes()
        # The same float operations in the same order as document_vector: bit-identical values.
        norm = self.k1 * (1 - self.b + self.b * np.array(lengths, dtype=np.float64) / self.avgdl)
        tf = counts.astype(np.float64)
        values = (tf * (self.k1 + 1) / (tf + norm[text_of])).tobytes()
        bounds = np.searchsorted(text_of, np.arange(len(texts) + 1)).tolist()
        return [(indices[4 * start:4 * end], values[8 * start:8 * end])
                for start, end in pairwise(bounds)]

    def query_vector(self, text: str) -> SparseVector:
        """1.0 for each unique term of the query."""
        indices = tuple(sorted(self._counts(text)[0]))
        return SparseVector(indices=indices, values=(1.0,) * len(indices))

    def _embed_all(self, texts: Sequence[str]) -> list[Vectors]:
        return [Vectors(sparse=self.document_vector(text)) for text in texts]

    async def embed_documents(self, texts: Sequence[str]) -> list[Vectors]:
        if sum(len(t) for t in texts) > _THREAD_THRESHOLD:
            return await asyncio.to_thread(self._embed_all, texts)
        return self._embed_all(texts)

    async def embed_query(self, text: str) -> Vectors:
        return Vectors(sparse=self.query_vector(text))

    async def aclose(self) -> None:
        """Nothing to release; present so every embedder closes the same way."""
