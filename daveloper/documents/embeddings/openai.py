"""Dense embeddings from any OpenAI-compatible ``/embeddings`` endpoint (OpenAI, vLLM, Ollama, llama.cpp).

The official ``openai`` SDK does the HTTP: it retries 408/409/429/5xx and
connection errors with exponential backoff (honouring ``Retry-After``), so this
module only batches, checks the answer, and translates the SDK's exceptions
into Daveloper's error tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from daveloper.documents.model import Vectors
from daveloper.errors import DaveloperError, InvalidArgument, Unavailable
from daveloper.redaction import OutboundRedactor

if TYPE_CHECKING:  # the SDK takes ~0.5 s to import: loaded only when this embedder is built
    import openai

__all__ = ["KNOWN_DIMENSIONS", "OpenAIEmbedder"]

#: Output sizes of well-known models, used when ``dense_size`` is not given.
KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
    "nomic-embed-text": 768,
    "all-minilm": 384,
    "mxbai-embed-large": 1024,
}


def _translate(exc: openai.OpenAIError, model: str) -> DaveloperError:
    """The Daveloper error for an SDK exception (after the SDK's own retries)."""
    import openai

    meta = {"model": model}
    if isinstance(exc, openai.RateLimitError):
        return Unavailable("embedding endpoint is rate limiting us", reason="EMBEDDINGS_RATE_LIMITED",
                           retry_after=5.0, metadata=meta)
    if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        # The input itself was refused (too long, empty, wrong type): retrying cannot help.
        return InvalidArgument(f"embedding endpoint rejected the input: {exc.message}",
                               reason="EMBEDDING_INPUT_REJECTED", metadata=meta)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError | openai.NotFoundError):
        # Wrong key, URL or model name: an operator must fix the configuration.
        return Unavailable(f"embedding endpoint refused the request: {exc.message}",
                           reason="EMBEDDINGS_MISCONFIGURED", metadata=meta)
    if isinstance(exc, openai.APIStatusError):
        return Unavailable(f"embedding endpoint answered HTTP {exc.status_code}", reason="EMBEDDINGS_UNAVAILABLE",
                           retry_after=1.0, metadata=meta)
    return Unavailable(f"embedding endpoint unreachable: {exc}", reason="EMBEDDINGS_UNAVAILABLE",
                       retry_after=1.0, metadata=meta)


class OpenAIEmbedder:
    """Dense vectors from an OpenAI-compatible endpoint; implements ``Embedder``.

    ``dense_size`` is the vector size the collection is created with; it is
    taken from ``dimensions`` (sent to models that can shorten their output),
    else :data:`KNOWN_DIMENSIONS`, and must be given for any other model.
    Answers of another size fail loudly rather than corrupting the collection.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        dense_size: int | None = None,
        dimensions: int | None = None,
        batch_size: int = 64,
        max_retries: int = 4,
        timeout: float = 60.0,
        client: openai.AsyncOpenAI | None = None,
        redactor: OutboundRedactor | None = None,
    ) -> None:
        import openai

        size = dense_size or dimensions or KNOWN_DIMENSIONS.get(model)
        if size is None:
            raise ValueError(f"unknown vector size for embedding model {model!r}: pass dense_size")
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.name = f"openai:{model}"
        self.dense_size: int | None = size
        self.model = model
        self._dimensions = dimensions
        self._batch_size = batch_size
        #: Redacts texts before they are sent (``DAVELOPER_REDACT``); vectors are of the redacted text.
        self._redactor = redactor
        self._owns_client = client is None
        # Local servers (Ollama, llama.cpp) want no key, but the SDK insists on one.
        self._client = client or openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unused", max_retries=max_retries, timeout=timeout
        )

    async def _embed_batch(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        import openai

        try:
            response = await self._client.embeddings.create(
                input=[self._redactor.redact(t).text for t in texts] if self._redactor is not None else list(texts),
                model=self.model,
                # Plain floats: the SDK's default (base64) is not understood by every compatible server.
                encoding_format="float",
                dimensions=self._dimensions if self._dimensions else openai.omit,
            )
        except openai.OpenAIError as exc:
            raise _translate(exc, self.model) from exc
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(texts) or [d.index for d in data] != list(range(len(texts))):
            raise Unavailable(f"embedding endpoint returned {len(data)} vectors for {len(texts)} inputs",
                              reason="EMBEDDINGS_BAD_RESPONSE", metadata={"model": self.model})
        vectors = [tuple(float(x) for x in d.embedding) for d in data]
        for vector in vectors:
            if len(vector) != self.dense_size:
                raise Unavailable(
                    f"embedding model {self.model} returned {len(vector)}-dimensional vectors, "
                    f"configured for {self.dense_size}",
                    reason="EMBEDDING_SIZE_MISMATCH", metadata={"model": self.model},
                )
        return vectors

    async def embed_documents(self, texts: Sequence[str]) -> list[Vectors]:
        out: list[Vectors] = []
        # Sequential batches: a large upload should not take a shared endpoint's whole rate limit at once.
        for start in range(0, len(texts), self._batch_size):
            batch = await self._embed_batch(texts[start:start + self._batch_size])
            out.extend(Vectors(dense=v) for v in batch)
        return out

    async def embed_query(self, text: str) -> Vectors:
        (vector,) = await self._embed_batch([text])
        return Vectors(dense=vector)

    async def aclose(self) -> None:
        """Close the HTTP client (only if this embedder created it)."""
        if self._owns_client:
            await self._client.close()
