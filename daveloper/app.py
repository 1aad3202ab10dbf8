"""The composition root: every resource opens here, in order, and closes in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from daveloper.agent.conversations import Conversations
from daveloper.agent.llm import make_chat_model
from daveloper.agent.llm.guarded import GuardedChatModel, is_model_failure
from daveloper.agent.model import ChatModel
from daveloper.agent.tools import Toolbox
from daveloper.agent.turns import DEFAULT_SYSTEM_PROMPT, Agent, AgentSettings
from daveloper.audit import AuditLog
from daveloper.breaker import BreakerProbe, CircuitBreaker
from daveloper.config import Address, Settings, parse_rate
from daveloper.descriptors import load_descriptor_pool
from daveloper.documents.catalog import Catalog
from daveloper.documents.embeddings import HybridEmbedder, make_embedder
from daveloper.documents.ingest import Ingestion, Ingestor, ingestion_scope
from daveloper.documents.pool import DocumentBudget, DocumentPool
from daveloper.documents.search import DocumentSearch
from daveloper.documents.store import ChunkStore
from daveloper.documents.versions import current_chunks
from daveloper.edge import Edge, open_edge
from daveloper.eventlog import EventLog
from daveloper.gateway import open_gateway
from daveloper.guard import Guard, RatePolicy
from daveloper.health import HealthMonitor
from daveloper.infra.qdrant import open_qdrant, qdrant_probe
from daveloper.infra.redis import open_redis, redis_probe
from daveloper.jobs import BackgroundJobs
from daveloper.leases import LeaseSet
from daveloper.logredaction import Redactor, secrets_of
from daveloper.logstream import LogPublisher
from daveloper.metrics import METRICS, Metrics, open_metrics_server
from daveloper.ownership import WorkLeases
from daveloper.ratelimit import RateLimiter
from daveloper.redaction import OutboundRedactor
from daveloper.registry import InstanceRegistry
from daveloper.rpc import Interceptor, grpclib_compat
from daveloper.rpc.connections import guard_server
from daveloper.rpc.encoded import PassThroughCodec
from daveloper.runtime import RuntimeConfig
from daveloper.scraper.crawl import Crawler, CrawlLimits
from daveloper.scraper.fetcher import Fetcher, FetchLimits, open_http_session
from daveloper.scraper.github import GitHubClient
from daveloper.scraper.github_ingest import GitHubIngest, GitHubLimits
from daveloper.scraper.jobs import JobLimits, JobRunner, JobStore, job_scope
from daveloper.scraper.safety import AddressPolicy, Refusal
from daveloper.scraper.tools import WebTools
from daveloper.servicers.agent import AgentService, purge_conversations
from daveloper.servicers.document import DocumentService
from daveloper.servicers.logs import LogsService
from daveloper.servicers.scraper import ScraperService
from daveloper.servicers.session import SessionService
from daveloper.servicers.vector import VectorService, delete_session_vectors
from daveloper.sessions import SessionStore, TokenSigner, load_secret_key
from daveloper.sweeper import Sweeper, purge_named_keys
from daveloper.tls import grpc_context
from daveloper.tracing import configure_tracing
from daveloper.usage import SessionUsage, count_leases, counter, hash_fields
from daveloper.vectors import VectorEngine
from generated.daveloper.v1 import Document, Quota

__all__ = ["App", "open_app", "serve"]

log = logging.getLogger("daveloper.app")


@dataclass(frozen=True, slots=True)
class App:
    """A running Daveloper instance and the resources it owns."""

    settings: Settings
    grpc_addr: Address
    redis: aioredis.Redis
    qdrant: VectorEngine
    events: EventLog
    sessions: SessionStore
    catalog: Catalog
    chunk_store: ChunkStore
    search: DocumentSearch
    jobs: BackgroundJobs
    health: HealthMonitor
    interceptor: Interceptor
    server: Server
    #: The web edge (``None`` for role ``grpc``).
    web: Edge | None
    #: Keeps this instance in the registry edges discover (role ``grpc``); cancelled when draining.
    registration: asyncio.Task[None] | None = None
    #: What this instance counts into (its ``GET /metrics``).
    metrics: Metrics = METRICS
    #: The worker processes that parse, chunk and embed documents (``None`` only in hand-built apps).
    documents_pool: DocumentPool | None = None

    @property
    def edge(self) -> Edge:
        if self.web is None:
            raise RuntimeError("this instance runs no edge (role grpc)")
        return self.web

    async def drain(self) -> None:
        """Stop accepting calls, let running ones finish up to the drain deadline, then end them.

        The edge and the gRPC server drain together: WebSocket streams are gRPC
        calls to this server, so they end when the server ends its calls.
        """
        log.info("draining", extra={"inflight": self.interceptor.inflight,
                                    "drain_seconds": self.settings.drain_seconds})
        self.health.set_draining()
        if self.registration is not None:  # edges stop choosing this instance before it refuses calls
            self.registration.cancel()
            await asyncio.wait([self.registration])
        await asyncio.gather(*([self.web.drain()] if self.web else []), self._drain_grpc())

    async def _drain_grpc(self) -> None:
        # grpclib's Server.close() would cancel every handler at once; close only
        # the listening socket first (no public API for that) and drain ourselves.
        listener = grpclib_compat.listener(self.server)
        if listener is not None:
            listener.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_seconds
        with contextlib.suppress(TimeoutError):
            await self.interceptor.drain(self.settings.drain_seconds)
        # Background jobs (ingestions) get what is left of the drain period, then
        # are cancelled and record that they were interrupted.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.jobs.idle()
        await self.jobs.aclose()


def _bound_port(server: Server) -> int | None:
    """The port the OS gave us (for ``port 0``); grpclib does not expose its listener."""
    listener = grpclib_compat.listener(server)
    sockets = getattr(listener, "sockets", None)
    return int(sockets[0].getsockname()[1]) if sockets else None


@contextlib.asynccontextmanager
async def open_app(settings: Settings, *, chat_model: ChatModel | None = None,
                   metrics: Metrics | None = None) -> AsyncIterator[App]:
    """Open Redis, Qdrant, the event log and the gRPC server; yield the running app.

    Every component counts into ``metrics`` (default: the process's :data:`~daveloper.metrics.METRICS`).
    Leaving the context drains the server and closes everything in reverse order.
    """
    metrics = metrics or METRICS
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(open_redis(settings, metrics=metrics))
        qdrant = await stack.enter_async_context(open_qdrant(settings, metrics=metrics))
        events = EventLog(redis, retention=settings.event_retention, ttl_seconds=settings.event_ttl_seconds,
                          metrics=metrics)
        stack.push_async_callback(events.aclose)

        secret = await load_secret_key(redis, settings.secret_key)
        signer = TokenSigner(secret, previous=[key.encode() for key in settings.previous_secret_keys])
        # What leaves for an external model or embedding endpoint (DAVELOPER_REDACT); session ids as pseudonyms.
        redactor = OutboundRedactor(settings.redact, key=secret,
                                    on_redacted=lambda kind, count: metrics.redactions.labels(kind).inc(count))
        sessions = SessionStore(redis, signer, admin_token=settings.admin_token,
                                idle_ttl_seconds=settings.session_idle_ttl_seconds)
        audit = AuditLog(redis, retention_seconds=settings.audit_retention_seconds, instance=settings.instance_id)
        runtime = RuntimeConfig(redis, settings)
        policy = RatePolicy.from_settings(settings)

        def apply_rate(name: str, value: object) -> None:
            if name.startswith("rate_"):
                policy.classes[name.removeprefix("rate_")] = parse_rate(str(value), name=name)

        runtime.on_change(apply_rate)
        await runtime.refresh()
        guard = Guard(sessions, RateLimiter(redis), policy, audit, switches=runtime.enabled, metrics=metrics)

        embedder = make_embedder(
            settings.embedder, redis=redis, openai_model=settings.embedding_model,
            openai_base_url=settings.embedding_base_url, openai_api_key=settings.embedding_api_key,
            dense_size=settings.embedding_size, redactor=redactor,
        )
        stack.push_async_callback(embedder.aclose)
        chunk_store = ChunkStore(qdrant, dense_size=embedder.dense_size, embedder=embedder.name)
        await chunk_store.ensure_collection()
        catalog = Catalog(redis, ingestion_ttl_seconds=settings.event_ttl_seconds,
                          max_documents=settings.quota_documents, max_bytes=settings.quota_stored_bytes)
        search = DocumentSearch(chunk_store, embedder, catalog=catalog)  # one version of each document
        # Closed after the jobs (which are its callers): the exit stack unwinds in reverse.
        pool = DocumentPool(workers=settings.parse_workers, budget=DocumentBudget(
            cpu_seconds=settings.parse_cpu_seconds, memory_bytes=settings.parse_memory_mb << 20,
            max_chunks=settings.parse_max_chunks))
        stack.push_async_callback(pool.aclose)  # its workers start with the first document
        jobs = BackgroundJobs()
        stack.push_async_callback(jobs.aclose)
        work = WorkLeases(redis, owner=settings.instance_id, ttl_seconds=settings.lease_seconds,
                          stall_seconds=settings.stall_seconds, metrics=metrics)
        ingestor = Ingestor(events=events, catalog=catalog, store=chunk_store, pool=pool, jobs=jobs,
                            dense=embedder.dense if isinstance(embedder, HybridEmbedder) else None,
                            work=work, metrics=metrics)

        scraper = await stack.enter_async_context(_open_scraper(settings, redis, events, jobs, ingestor, catalog,
                                                                audit, work, metrics))

        async def purge_vectors(session_id: str) -> None:
            await delete_session_vectors(qdrant, session_id, chunk_store)

        turn_leases = LeaseSet(redis, "turns", ttl_seconds=600)
        llm_breaker = CircuitBreaker("llm", failures=settings.breaker_failures,
                                     reset_seconds=settings.breaker_reset_seconds, classify=is_model_failure)
        llm = chat_model or make_chat_model(settings.chat_provider, base_url=settings.llm_base_url,
                                            api_key=settings.llm_api_key, model=settings.llm_model,
                                            redactor=redactor)
        model = GuardedChatModel(llm, llm_breaker, first_event_seconds=settings.llm_first_event_seconds)
        # Only the OpenAI-wire model has an endpoint to probe (checked by name: its SDK loads lazily).
        ping = getattr(llm, "ping", None) if settings.llm_probe_seconds else None
        if (close_model := getattr(model, "aclose", None)) is not None:
            stack.push_async_callback(close_model)
        conversations = Conversations(redis)
        agent = Agent(
            events=events, conversations=conversations, model=model, jobs=jobs,
            leases=turn_leases, work=work, limits=runtime.count, metrics=metrics,
            tools=Toolbox(
                search=search, redis=redis, enabled=runtime.tool_enabled, document_version=catalog.version_key,
                web=WebTools(
                    runner=scraper.runner, crawler=scraper.crawler, github=scraper.github,
                    chunks=lambda session_id, document_id, limit: current_chunks(catalog, chunk_store, session_id,
                                                                                 document_id, limit),
                ),
            ),
            settings=AgentSettings(system_prompt=settings.system_prompt or DEFAULT_SYSTEM_PROMPT,
                                   max_tool_rounds=settings.max_tool_rounds, model=settings.llm_model,
                                   coalesce_chars=settings.coalesce_chars,
                                   coalesce_seconds=settings.coalesce_ms / 1000,
                                   owner=settings.instance_id, provider=settings.chat_provider,
                                   max_concurrent_turns=settings.quota_concurrent_turns,
                                   max_running_turns=settings.max_running_turns,
                                   max_starting_turns=settings.max_starting_turns),
        )

        async def purge_chats(session_id: str) -> None:
            await purge_conversations(conversations, events, session_id)

        async def purge_event_logs(session_id: str) -> None:
            # Job and ingestion logs are named by their ids, not by the session: delete them while
            # the records that list those ids still exist (the record purgers below remove those).
            for job_id in await scraper.store.job_ids(session_id):
                await events.delete(job_scope(job_id))
            for ingestion_id in await catalog.ingestion_ids(session_id):
                await events.delete(ingestion_scope(ingestion_id))

        async def purge_session_keys(session_id: str) -> None:
            # Rate buckets, leases, caches, crawl validators, counters: every other key named by the session.
            await purge_named_keys(redis, [session_id])

        purgers = [purge_chats, purge_event_logs, catalog.purge_session, purge_vectors, scraper.store.purge_session,
                   purge_session_keys]
        usage = SessionUsage(sessions.pipeline, [
            hash_fields(catalog.usage_key, ["documents", "bytes"], lambda used: [
                Quota(name="documents", limit=settings.quota_documents, used=used[0]),
                Quota(name="stored_bytes", limit=settings.quota_stored_bytes, used=used[1])]),
            count_leases(turn_leases.key, "concurrent_turns", lambda: runtime.count("quota_concurrent_turns")),
            count_leases(scraper.store.leases.key, "concurrent_jobs", lambda: settings.scrape_jobs_per_session),
            counter(scraper.store.pages_key, "scrape_pages_today", lambda: settings.scrape_pages_per_day),
        ], guard.queue_rate_limits, guard.rate_limits)

        session_service = SessionService(
            store=sessions, auth=guard,
            default_ttl=settings.session_ttl_seconds,
            max_ttl=settings.session_max_ttl_seconds,
            purgers=purgers,
            audit=audit,
            usage=usage,
        )
        sweeper = Sweeper(redis, sessions, purgers, settings.sweep_interval_seconds, audit=audit)
        documents = DocumentService(auth=guard, ingestor=ingestor, catalog=catalog, chunks=chunk_store,
                                    search=search, events=events, max_upload_bytes=settings.max_upload_bytes,
                                    audit=audit, heartbeat_seconds=settings.heartbeat_seconds)
        services: list[Any] = [
            session_service,
            documents,
            VectorService(auth=guard, qdrant=qdrant),
            AgentService(auth=guard, agent=agent, conversations=conversations, events=events,
                         heartbeat_seconds=settings.heartbeat_seconds),
            ScraperService(auth=guard, runner=scraper.runner, crawler=scraper.crawler, github=scraper.github,
                           heartbeat_seconds=settings.heartbeat_seconds),
            LogsService(auth=guard, audit=audit, redis=redis, heartbeat_seconds=settings.heartbeat_seconds),
        ]

        llm_probe = BreakerProbe("llm", llm_breaker, request=ping, every=settings.llm_probe_seconds)
        health = HealthMonitor([redis_probe(redis), qdrant_probe(qdrant)], advisory=[llm_probe], metrics=metrics)
        await health.check_once()
        qdrant_users = (DocumentService, VectorService, AgentService, ScraperService)
        needs = {s: ["redis", "qdrant"] if isinstance(s, qdrant_users) else ["redis"] for s in services}
        needs = {s: [*names, "llm"] if isinstance(s, AgentService) else names for s, names in needs.items()}
        health_service = health.service(needs)

        interceptor = Interceptor(max_message_bytes=settings.max_message_bytes,
                                  trusted_proxies=settings.trusted_proxies, metrics=metrics)
        # Stored events go out as stored (daveloper.rpc.encoded); a given codec drops grpclib's default
        # status-details codec, so name it too.
        server = Server(ServerReflection.extend([*services, health_service], pool=load_descriptor_pool()),
                        codec=PassThroughCodec(), status_details_codec=ProtoStatusDetailsCodec())
        interceptor.install(server)
        guard_server(server, header_seconds=settings.header_timeout_seconds,
                     per_address=settings.max_connections_per_address,
                     on_refused=lambda reason: metrics.connections_refused.labels("grpc", reason).inc(),
                     shared=settings.trusted_proxies)
        await server.start(settings.grpc_addr.host, settings.grpc_addr.port, ssl=grpc_context(settings),
                           backlog=settings.listen_backlog)
        grpc_addr = Address(settings.grpc_addr.host, _bound_port(server) or settings.grpc_addr.port)

        work.on_orphan("turn", agent.fail_orphan)
        work.on_orphan("job", scraper.runner.fail_orphan)
        work.on_orphan("ingestion", ingestor.fail_orphan)

        if settings.metrics_addr is not None:
            await stack.enter_async_context(open_metrics_server(settings.metrics_addr, metrics,
                                                                token=settings.metrics_token))
        publisher = LogPublisher(redis, instance=settings.instance_id, redactor=Redactor(
            [*secrets_of(settings), signer.key_text]))
        publisher.start()
        stack.push_async_callback(publisher.aclose)
        async with asyncio.TaskGroup() as tasks:
            monitor = tasks.create_task(health.run(), name="health-monitor")
            sweeping = tasks.create_task(sweeper.run(), name="session-sweeper")
            options = tasks.create_task(runtime.run(), name="runtime-options")
            leasing = tasks.create_task(work.run(), name="work-leases")
            registration: asyncio.Task[None] | None = None
            try:
                async with contextlib.AsyncExitStack() as serving:
                    edge: Edge | None = None
                    if settings.role == "grpc":
                        registry = InstanceRegistry(redis, ttl_seconds=settings.lease_seconds)
                        registration = tasks.create_task(registry.heartbeat(settings.advertise_addr or grpc_addr),
                                                         name="registry-heartbeat")
                    else:
                        edge = await serving.enter_async_context(open_edge(
                            settings, upstreams=[grpc_addr, *settings.upstreams], health=health, metrics=metrics))
                    app = App(settings, grpc_addr, redis, qdrant, events, sessions, catalog, chunk_store, search,
                              jobs, health, interceptor, server, edge, registration, metrics, pool)
                    try:
                        yield app
                    finally:
                        await app.drain()
            finally:
                server.close()
                await server.wait_closed()
                for task in (monitor, sweeping, leasing, options, registration):
                    if task is not None:
                        task.cancel()
                log.info("stopped")


@dataclass(frozen=True, slots=True)
class _Scraper:
    store: JobStore
    runner: JobRunner
    crawler: Crawler
    github: GitHubIngest


@contextlib.asynccontextmanager
async def _open_scraper(settings: Settings, redis: aioredis.Redis, events: EventLog, jobs: BackgroundJobs,
                        ingestor: Ingestor, catalog: Catalog, audit: AuditLog,
                        work: WorkLeases, metrics: Metrics) -> AsyncIterator[_Scraper]:
    """The fetcher (its HTTP client checked by the address policy), crawl and GitHub jobs."""
    limits = FetchLimits(
        concurrency=settings.scrape_concurrency, per_host_concurrency=settings.scrape_per_host_concurrency,
        per_host_delay=settings.scrape_per_host_delay_ms / 1000, timeout_seconds=settings.scrape_timeout_seconds,
        max_bytes=settings.scrape_max_page_bytes, host_failures=settings.breaker_failures,
        host_reset_seconds=settings.breaker_reset_seconds,
    )
    policy = AddressPolicy.from_entries(settings.scrape_allow)

    async def ingest_page(session_id: str, data: bytes, name: str, media_type: str, url: str,
                          metadata: dict[str, str]) -> Document:
        return await ingestor.ingest(Ingestion(id="", session_id=session_id, file_name=name, media_type=media_type,
                                               source_uri=url, metadata=metadata, data=bytearray(data)))

    async def document_exists(session_id: str, document_id: str) -> bool:
        return await catalog.find(session_id, document_id) is not None

    async def refused(session_id: str, url: str, refusal: Refusal) -> None:
        await audit.record("fetch.refused", session_id=session_id, url=url[:300], reason=refusal.reason,
                           address=refusal.metadata.get("address", ""))

    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(open_http_session(policy, limits))
        fetcher = Fetcher(http, policy, limits)
        stack.push_async_callback(fetcher.aclose)
        # GitHub's API root is the operator's choice, not a user's: it needs no address policy.
        github_http = await stack.enter_async_context(aiohttp.ClientSession())
        store = JobStore(redis, ttl_seconds=settings.event_ttl_seconds)
        yield _Scraper(
            store=store,
            runner=JobRunner(events=events, store=store, jobs=jobs, work=work, metrics=metrics, limits=JobLimits(
                concurrent_jobs=settings.scrape_jobs_per_session, pages_per_day=settings.scrape_pages_per_day)),
            crawler=Crawler(fetcher=fetcher, redis=redis, ingest=ingest_page, document_exists=document_exists,
                            limits=CrawlLimits(workers=settings.scrape_concurrency), on_refused=refused),
            github=GitHubIngest(
                client=GitHubClient(github_http, redis, base_url=settings.github_api_url, token=settings.github_token,
                                    timeout=settings.scrape_timeout_seconds,
                                    breaker=CircuitBreaker("github", failures=settings.breaker_failures,
                                                           reset_seconds=settings.breaker_reset_seconds)),
                ingest=ingest_page, limits=GitHubLimits(max_file_bytes=min(settings.scrape_max_page_bytes, 1 << 20)),
            ),
        )


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if (stop_tracing := configure_tracing(settings)) is not None:
                # Flushing waits on the collector: off the event loop.
                stack.push_async_callback(asyncio.to_thread, stop_tracing)
            if settings.role == "edge":
                gateway = await stack.enter_async_context(open_gateway(settings))
                log.info("serving", extra={"role": "edge", "edge": gateway.edge.url,
                                           "upstreams": [str(a) for a in settings.upstreams]})
                print(f"daveloper: web page, WebSocket (/ws) and HTTP/JSON on {gateway.edge.url}", flush=True)
            else:
                app = await stack.enter_async_context(open_app(settings))
                log.info("serving", extra={"role": settings.role, "grpc": str(app.grpc_addr),
                                           "edge": app.web.url if app.web else None,
                                           "data_dir": str(settings.data_dir)})
                print(f"daveloper: gRPC listening on {app.grpc_addr}", flush=True)
                if app.web is not None:
                    print(f"daveloper: web page, WebSocket (/ws) and HTTP/JSON on {app.web.url}", flush=True)
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("signal received, shutting down")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
