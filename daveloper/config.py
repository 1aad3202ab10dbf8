"""Settings: one frozen object, built once at the entry point and passed down.

Only :meth:`Settings.from_env` reads the environment. Every variable is
documented in the README with its default.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from daveloper.errors import ConfigError

__all__ = ["Address", "Settings", "parse_rate"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EMBEDDERS = ("bm25", "openai", "minilm")
LLM_PROVIDERS = ("offline", "openai")
ROLES = ("all", "grpc", "edge")
REDACT_MODES = ("none", "secrets", "pii")


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A TCP listen address."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, name: str = "address") -> Address:
        """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 picks a free one."""
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{name}: expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "daveloper"


def _default_parse_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


_PERIODS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str, *, name: str = "rate") -> tuple[int, float]:
    """``"30/min"`` → ``(30, 60.0)``: calls allowed (also the burst) and the period in seconds."""
    count, sep, period = text.strip().partition("/")
    if not sep or not count.strip().isdigit() or int(count) <= 0 or period.strip().lower() not in _PERIODS:
        raise ConfigError(f"{name}: expected N/s, N/min or N/h, got {text!r}")
    return int(count), _PERIODS[period.strip().lower()]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable about one Daveloper process."""

    #: What this process serves: ``all`` (gRPC and the edge), ``grpc`` (servicers only, registered in
    #: Redis for edges to find) or ``edge`` (the web edge only, calling gRPC instances).
    role: str = "all"
    #: gRPC servers an ``edge`` calls; instances registered in Redis are added to them.
    upstreams: tuple[Address, ...] = ()
    #: The address a ``grpc`` instance registers (default: its listen address; set it when listening
    #: on 0.0.0.0 or behind NAT).
    advertise_addr: Address | None = None
    #: An instance that stops renewing its leases is taken for dead after this long: it leaves the
    #: registry, and its running turns, jobs and uploads are failed by another instance.
    lease_seconds: float = 15.0
    #: Serve ``/metrics`` on this address too (the edge always serves it); for roles without an edge.
    metrics_addr: Address | None = None
    #: With a token, ``GET /metrics`` (edge and ``metrics_addr``) needs ``Authorization: Bearer <token>``.
    metrics_token: str | None = None
    #: Export OpenTelemetry traces over OTLP/HTTP (needs the ``tracing`` extra; the exporter reads the
    #: standard ``OTEL_EXPORTER_OTLP_*`` variables).
    otel_enabled: bool = False
    #: A model round whose first streamed event takes longer than this fails (UNAVAILABLE).
    llm_first_event_seconds: float = 60.0
    #: Circuit breakers (LLM endpoint, GitHub, each scraped host): open after this many failures in a
    #: row, then refuse calls for this long before letting one probe through.
    breaker_failures: int = 5
    breaker_reset_seconds: float = 30.0
    #: With the openai provider, ask the endpoint (``GET /models``) at most this often for the ``llm``
    #: health probe; 0: the probe only follows the LLM breaker.
    llm_probe_seconds: float = 0.0
    grpc_addr: Address = Address("127.0.0.1", 50051)
    #: HTTP/WebSocket edge listen address (browser page, ``/ws``, HTTP/JSON).
    edge_addr: Address = Address("127.0.0.1", 8080)
    #: Connections the kernel queues for the gRPC and edge listeners before they are accepted (capped
    #: by net.core.somaxconn); the OS default of 100 drops part of a burst of new clients.
    listen_backlog: int = 2048
    #: Origins (``scheme://host[:port]``) whose pages may open the WebSocket; the edge's own origin
    #: is always allowed, and clients that send no Origin (non-browsers) are not affected.
    allowed_origins: tuple[str, ...] = ()
    #: Largest WebSocket frame the edge accepts.
    ws_max_frame_bytes: int = 8 * 1024 * 1024
    #: Concurrent streams one WebSocket may carry.
    ws_max_streams: int = 100
    #: Metadata bytes an ``open`` frame may carry.
    ws_max_metadata_bytes: int = 8 * 1024
    #: A socket with no frames and no open streams for this long is closed.
    ws_idle_seconds: float = 120.0
    #: Concurrent WebSockets one session may hold.
    ws_max_sockets_per_session: int = 16
    #: A new connection must send its first request's headers (the edge) or its HTTP/2 preface and
    #: first headers (gRPC) within this many seconds, or it is closed (0: no limit).
    header_timeout_seconds: float = 10.0
    #: Connections one client address may hold open on each listener; more are closed at once (0: no limit).
    max_connections_per_address: int = 512
    #: What is redacted from text sent to an external LLM or embedding endpoint: none, secrets, or pii
    #: (secrets plus e-mail addresses and card numbers); see ``daveloper/redaction.py``.
    redact: str = "none"
    data_dir: Path = field(default_factory=_default_data_dir)
    #: ``redis://`` / ``rediss://`` / ``unix://`` URL; ``None`` starts an embedded Valkey.
    redis_url: str | None = None
    #: Redis connections per process; each open event-log stream (Chat, Watch, Upload) holds one.
    redis_max_connections: int = 2000
    #: Qdrant server URL; ``None`` runs Qdrant Edge in process under ``data_dir``.
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    #: HMAC key for session tokens; ``None`` shares one generated key through Redis.
    secret_key: str | None = None
    #: Token that may act across sessions (log tailing, operations); ``None`` disables it.
    admin_token: str | None = None
    session_ttl_seconds: int = 24 * 3600
    session_max_ttl_seconds: int = 30 * 24 * 3600
    #: Largest gRPC message accepted; larger ones are refused before they are read.
    max_message_bytes: int = 4 * 1024 * 1024
    #: How long in-flight RPCs may run after SIGTERM before they are cancelled.
    drain_seconds: float = 10.0
    #: Largest document an upload may carry.
    max_upload_bytes: int = 32 * 1024 * 1024
    #: Document embedder: ``bm25`` (sparse, in process), ``openai`` (dense, remote) or ``minilm`` (dense, local).
    embedder: str = "bm25"
    #: OpenAI-compatible endpoint for the ``openai`` embedder (``None``: the SDK's default).
    embedding_base_url: str | None = None
    embedding_api_key: str | None = None
    embedding_model: str = "text-embedding-3-small"
    #: Size of the model's vectors; needed only for models the server does not know.
    embedding_size: int | None = None
    #: Worker processes that parse, chunk and embed uploads and fetched pages.
    parse_workers: int = field(default_factory=_default_parse_workers)
    #: CPU seconds one document may take in its worker; over it: RESOURCE_EXHAUSTED, PARSE_BUDGET_EXCEEDED.
    parse_cpu_seconds: float = 30.0
    #: Address space of each parse worker, in MiB (a document needing more fails the same way).
    parse_memory_mb: int = 1024
    #: Chunks one document may make (the same failure past it).
    parse_max_chunks: int = 10_000
    #: Chat model provider: ``offline`` (no network) or ``openai`` (any OpenAI-compatible endpoint);
    #: empty picks ``openai`` when an endpoint or key is configured, else ``offline``.
    llm_provider: str = ""
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"
    #: Replaces the agent's built-in system prompt.
    system_prompt: str | None = None
    #: Tool-call rounds a turn may make before it must answer.
    max_tool_rounds: int = 4
    #: Token deltas are merged until this many characters (0: one event per model delta) ...
    coalesce_chars: int = 48
    #: ... or this many milliseconds have passed.
    coalesce_ms: int = 15
    #: Chat turns this instance runs at once; past it a new turn is refused (UNAVAILABLE, TURNS_SATURATED).
    max_running_turns: int = 500
    #: Chat turns this instance may be starting at once (admitted, model not yet called); past it the same refusal.
    max_starting_turns: int = 64
    #: Long streams (Chat, Watch, WatchJob, Tail, Upload) send a heartbeat after this many quiet seconds (0: never).
    heartbeat_seconds: float = 15.0
    #: Events kept per event-log stream (older ones expire: CURSOR_EXPIRED).
    event_retention: int = 10_000
    #: Idle event-log streams are deleted after this many seconds.
    event_ttl_seconds: int = 7 * 24 * 3600
    #: Destinations the scraper may fetch although they are not public (``host``, ``host:port`` or CIDR).
    scrape_allow: tuple[str, ...] = ()
    #: Scraper requests in flight, across all jobs / to one host.
    scrape_concurrency: int = 16
    scrape_per_host_concurrency: int = 4
    #: Minimum milliseconds between requests to one host (a robots.txt Crawl-delay raises it).
    scrape_per_host_delay_ms: int = 0
    scrape_timeout_seconds: float = 20.0
    #: Largest page (or file) the scraper reads.
    scrape_max_page_bytes: int = 8 * 1024 * 1024
    #: Scraper and GitHub jobs one session may run at once, and pages (or files) it may fetch per UTC day.
    scrape_jobs_per_session: int = 2
    scrape_pages_per_day: int = 5000
    #: GitHub REST API root (GitHub Enterprise: ``https://HOST/api/v3``); the token is optional.
    github_api_url: str = "https://api.github.com"
    github_token: str | None = None
    #: Old signing keys still accepted (not used to sign) while their tokens live out a key rotation.
    previous_secret_keys: tuple[str, ...] = ()
    #: A session with no authenticated call for this long expires (and is swept), whatever its TTL.
    session_idle_ttl_seconds: int = 24 * 3600
    #: How often the sweeper looks for expired sessions and removes every trace of them.
    sweep_interval_seconds: float = 300.0
    #: Rate limits, token buckets per session and per client address: ``N/s``, ``N/min`` or ``N/h``
    #: (N is also the burst). Chat turns, uploads, scrape and GitHub jobs, everything else, and
    #: new sessions (per client address only).
    rate_chat_turns: str = "30/min"
    rate_uploads: str = "30/min"
    rate_scrapes: str = "10/min"
    rate_calls: str = "1200/min"
    rate_sessions: str = "30/min"
    #: A client address may use this many times a session's rate (several users behind one NAT).
    rate_address_factor: float = 4.0
    #: Proxies (addresses or CIDR networks) whose ``X-Forwarded-For`` the edge believes.
    trusted_proxies: tuple[str, ...] = ()
    #: Per-session quotas.
    quota_documents: int = 500
    quota_stored_bytes: int = 256 * 1024 * 1024
    quota_concurrent_turns: int = 4
    #: Security-relevant events are kept this long (readable with the admin token).
    audit_retention_seconds: int = 30 * 24 * 3600
    #: PEM certificate chain and key: serve gRPC and the edge over TLS.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    log_level: str = "INFO"
    instance_id: str = field(default_factory=_default_instance_id)

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        for name in ("session_ttl_seconds", "session_max_ttl_seconds", "max_message_bytes", "max_upload_bytes",
                     "redis_max_connections", "event_retention", "event_ttl_seconds", "ws_max_frame_bytes",
                     "ws_max_streams", "ws_max_metadata_bytes", "ws_idle_seconds", "ws_max_sockets_per_session",
                     "scrape_concurrency", "scrape_per_host_concurrency", "scrape_timeout_seconds",
                     "scrape_max_page_bytes", "scrape_jobs_per_session", "scrape_pages_per_day",
                     "session_idle_ttl_seconds", "sweep_interval_seconds", "rate_address_factor",
                     "quota_documents", "quota_stored_bytes", "quota_concurrent_turns", "audit_retention_seconds",
                     "max_running_turns", "max_starting_turns"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.redact not in REDACT_MODES:
            raise ConfigError(f"redact must be one of {', '.join(REDACT_MODES)}, got {self.redact!r}")
        if self.role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        for name in ("lease_seconds", "llm_first_event_seconds", "breaker_failures", "breaker_reset_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.llm_probe_seconds < 0:
            raise ConfigError("llm_probe_seconds must not be negative")
        if self.llm_provider not in ("", *LLM_PROVIDERS):
            raise ConfigError(f"llm provider must be one of {', '.join(LLM_PROVIDERS)}, got {self.llm_provider!r}")
        if self.embedder not in EMBEDDERS:
            raise ConfigError(f"embedder must be one of {', '.join(EMBEDDERS)}, got {self.embedder!r}")
        for name in ("rate_chat_turns", "rate_uploads", "rate_scrapes", "rate_calls", "rate_sessions"):
            parse_rate(getattr(self, name), name=name)
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("TLS needs both tls_cert_file and tls_key_file")
        if self.scrape_per_host_delay_ms < 0:
            raise ConfigError("scrape_per_host_delay_ms must not be negative")
        if self.drain_seconds < 0:
            raise ConfigError("drain_seconds must not be negative")
        for name in ("parse_workers", "parse_cpu_seconds", "parse_memory_mb", "parse_max_chunks", "listen_backlog"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``DAVELOPER_*`` variables; ``overrides`` (CLI flags) win."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(f"DAVELOPER_{name}", "").strip()
            return value or None

        def number(name: str, kind: type[int] | type[float]) -> int | float | None:
            value = get(name)
            if value is None:
                return None
            try:
                return kind(value)
            except ValueError:
                raise ConfigError(f"DAVELOPER_{name} must be a number, got {value!r}") from None

        values: dict[str, object] = {}
        if (addr := get("GRPC_ADDR")) is not None:
            values["grpc_addr"] = Address.parse(addr, name="DAVELOPER_GRPC_ADDR")
        if (addr := get("EDGE_ADDR")) is not None:
            values["edge_addr"] = Address.parse(addr, name="DAVELOPER_EDGE_ADDR")
        if (flag := get("OTEL_ENABLED")) is not None:
            if flag.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ConfigError(f"DAVELOPER_OTEL_ENABLED must be true or false, got {flag!r}")
            values["otel_enabled"] = flag.lower() in ("true", "1", "yes", "on")
        if (addr := get("METRICS_ADDR")) is not None:
            values["metrics_addr"] = Address.parse(addr, name="DAVELOPER_METRICS_ADDR")
        if (addr := get("ADVERTISE_ADDR")) is not None:
            values["advertise_addr"] = Address.parse(addr, name="DAVELOPER_ADVERTISE_ADDR")
        if (listed := get("UPSTREAMS")) is not None:
            values["upstreams"] = tuple(Address.parse(a, name="DAVELOPER_UPSTREAMS")
                                        for a in listed.split(",") if a.strip())
        if (role := get("ROLE")) is not None:
            values["role"] = role.lower()
        if (origins := get("ALLOWED_ORIGINS")) is not None:
            values["allowed_origins"] = tuple(o.strip().rstrip("/") for o in origins.split(",") if o.strip())
        for key in ("previous_secret_keys", "trusted_proxies"):
            if (listed := get(key.upper())) is not None:
                values[key] = tuple(item.strip() for item in listed.split(",") if item.strip())
        for key in ("tls_cert_file", "tls_key_file"):
            if (path := get(key.upper())) is not None:
                values[key] = Path(path).expanduser()
        if (allow := get("SCRAPE_ALLOW")) is not None:
            values["scrape_allow"] = tuple(a.strip() for a in allow.split(",") if a.strip())
        if (data_dir := get("DATA_DIR")) is not None:
            values["data_dir"] = Path(data_dir).expanduser()
        for key in ("redis_url", "qdrant_url", "qdrant_api_key", "secret_key", "admin_token", "metrics_token",
                    "instance_id", "embedding_base_url", "embedding_api_key", "embedding_model",
                    "llm_base_url", "llm_api_key", "llm_model", "system_prompt", "github_api_url", "github_token",
                    "rate_chat_turns", "rate_uploads", "rate_scrapes", "rate_calls", "rate_sessions"):
            if (value := get(key.upper())) is not None:
                values[key] = value
        if (provider := get("LLM_PROVIDER")) is not None:
            values["llm_provider"] = provider.lower()
        if (embedder := get("EMBEDDER")) is not None:
            values["embedder"] = embedder.lower()
        if (level := get("LOG_LEVEL")) is not None:
            values["log_level"] = level.upper()
        if (redact := get("REDACT")) is not None:
            values["redact"] = redact.lower()
        for key, kind in (("session_ttl_seconds", int), ("session_max_ttl_seconds", int),
                          ("max_message_bytes", int), ("max_upload_bytes", int), ("drain_seconds", float),
                          ("event_retention", int), ("event_ttl_seconds", int), ("embedding_size", int),
                          ("max_tool_rounds", int), ("coalesce_chars", int), ("coalesce_ms", int),
                          ("max_running_turns", int), ("max_starting_turns", int), ("heartbeat_seconds", float),
                          ("redis_max_connections", int), ("ws_max_frame_bytes", int), ("ws_max_streams", int),
                          ("ws_max_metadata_bytes", int), ("ws_idle_seconds", float),
                          ("ws_max_sockets_per_session", int), ("scrape_concurrency", int),
                          ("scrape_per_host_concurrency", int), ("scrape_per_host_delay_ms", int),
                          ("scrape_timeout_seconds", float), ("scrape_max_page_bytes", int),
                          ("scrape_jobs_per_session", int), ("scrape_pages_per_day", int),
                          ("session_idle_ttl_seconds", int), ("sweep_interval_seconds", float),
                          ("rate_address_factor", float), ("quota_documents", int), ("quota_stored_bytes", int),
                          ("quota_concurrent_turns", int), ("audit_retention_seconds", int),
                          ("lease_seconds", float), ("llm_first_event_seconds", float), ("breaker_failures", int),
                          ("breaker_reset_seconds", float), ("llm_probe_seconds", float)):
            if (num := number(key.upper(), kind)) is not None:
                values[key] = num
        for key, kind in (("parse_workers", int), ("parse_cpu_seconds", float), ("parse_memory_mb", int),
                          ("parse_max_chunks", int), ("listen_backlog", int), ("header_timeout_seconds", float),
                          ("max_connections_per_address", int)):
            if (num := number(key.upper(), kind)) is not None:
                values[key] = num
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def chat_provider(self) -> str:
        """The provider in effect: the configured one, else ``openai`` if an endpoint is set, else ``offline``."""
        if self.llm_provider:
            return self.llm_provider
        return "openai" if self.llm_base_url or self.llm_api_key else "offline"

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (settings stay immutable)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
