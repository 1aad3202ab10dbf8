"""Every Redis key and channel Daveloper uses, named in one place from the configured prefix.

:data:`FAMILIES` lists each family: its name pattern, Redis type, lifetime and
owning module. :class:`Keys` builds the names; every component receives one
``Keys`` (or builds the default) instead of formatting names itself.

Hash tags. On a Redis/Valkey Cluster a multi-key script or ``MULTI`` must stay
in one hash slot, and only the part of a name inside the first ``{...}`` is
hashed. So keys that a script or transaction touches together share a tag:

* ``{<session id>}`` for everything a session owns: its record, rate-limit
  buckets, leases, documents, conversations and turns, scraper jobs, caches.
  A session's data lives on one node; sessions spread over the cluster.
* ``{<scope>}`` for an event-log scope: its stream, state, cancel flag and its
  two channels (published from the append and cancel scripts, so on a cluster
  they are *sharded* channels hashing to the same slot).
* ``{work}`` for the cluster-wide work ownership set and its data hash.

Global keys (the session index, instance registry, audit stream, runtime
config) are single keys with no tag: nothing writes them together with
another key in one script. On a single server tags change nothing but the name.

Session ids, conversation ids and scopes never contain ``{`` or ``}``
(URL-safe base64 and ``:``-joined ids), so a tag is exactly the id.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from daveloper.errors import InvalidArgument

__all__ = ["DEFAULT_KEYS", "DEFAULT_PREFIX", "FAMILIES", "KeyFamily", "Keys", "ScopeKeys"]

DEFAULT_PREFIX = "dv:"


@dataclass(frozen=True, slots=True)
class KeyFamily:
    """One family of keys: ``pattern`` after the prefix, Redis ``type``, ``ttl`` and ``owner`` module."""

    pattern: str
    type: str
    ttl: str
    owner: str


#: Every family, for operators and for the test that checks nothing else is written.
FAMILIES: tuple[KeyFamily, ...] = (
    # global
    KeyFamily("config", "hash", "none", "daveloper.runtime"),
    KeyFamily("secret:session-signing", "string", "none", "daveloper.sessions"),
    KeyFamily("sessions:expiry", "zset", "none (members removed by the sweeper)", "daveloper.sessions"),
    KeyFamily("instances", "zset", "none (members lapse after the registry TTL)", "daveloper.registry"),
    KeyFamily("audit", "stream", "trimmed by age", "daveloper.audit"),
    KeyFamily("logs", "channel", "-", "daveloper.logstream"),
    KeyFamily("{work}", "zset", "none (members lapse)", "daveloper.ownership"),
    KeyFamily("{work}:data", "hash", "none", "daveloper.ownership"),
    KeyFamily("rl:a:<address>", "hash", "slowest refill + 1 s", "daveloper.guard"),
    KeyFamily("robots:<origin>", "string", "robots cache TTL", "daveloper.scraper.robots"),
    KeyFamily("gh:etag:<digest>", "hash", "cache TTL", "daveloper.scraper.github_cache"),
    KeyFamily("emb:<model>:<digest>", "string", "cache TTL (texts embedded outside a session)",
              "daveloper.documents.embeddings.cache"),
    # session scope
    KeyFamily("session:{<session>}", "hash", "idle/hard deadline", "daveloper.sessions"),
    KeyFamily("rl:s:{<session>}", "hash", "slowest refill + 1 s", "daveloper.guard"),
    KeyFamily("leases:<kind>:{<session>}", "zset", "lease TTL", "daveloper.leases"),
    KeyFamily("docs:{<session>}", "zset", "session (purged)", "daveloper.documents.catalog"),
    KeyFamily("doc:{<session>}:<document>", "string", "session (purged)", "daveloper.documents.catalog"),
    KeyFamily("docusage:{<session>}", "hash", "session (purged)", "daveloper.documents.catalog"),
    KeyFamily("docversion:{<session>}", "string", "session (purged)", "daveloper.documents.catalog"),
    KeyFamily("docclient:{<session>}", "hash", "session (purged)", "daveloper.documents.catalog"),
    KeyFamily("dochidden:{<session>}", "hash", "session (purged)", "daveloper.documents.catalog"),
    KeyFamily("ingestions:{<session>}", "set", "ingestion TTL", "daveloper.documents.catalog"),
    KeyFamily("conv:{<session>}:<conversation>", "string", "session (purged)", "daveloper.agent.conversations"),
    KeyFamily("convs:{<session>}", "zset", "session (purged)", "daveloper.agent.conversations"),
    KeyFamily("turn:{<session>}:<conversation>:<turn>", "string", "session (purged)",
              "daveloper.agent.conversations"),
    KeyFamily("turns:{<session>}:<conversation>", "list", "session (purged)", "daveloper.agent.conversations"),
    KeyFamily("turnclient:{<session>}:<conversation>", "hash", "session (purged)",
              "daveloper.agent.conversations"),
    KeyFamily("emb:<model>:{<session>}:<digest>", "string", "cache TTL", "daveloper.documents.embeddings.cache"),
    KeyFamily("toolcache:{<session>}:<digest>", "string", "tool cache TTL", "daveloper.agent.tools"),
    KeyFamily("jobs:{<session>}", "zset", "job TTL", "daveloper.scraper.job_store"),
    KeyFamily("scrapepages:{<session>}:<day>", "string", "two days", "daveloper.scraper.job_store"),
    KeyFamily("scrapeseen:{<session>}:<digest>", "string", "crawl TTL", "daveloper.scraper.crawl"),
    KeyFamily("sessionkeys:{<session>}", "set", "longest TTL of its members", "daveloper.sessions"),
    # job scope (looked up by id alone, written alone)
    KeyFamily("job:<job>", "hash", "job TTL", "daveloper.scraper.job_store"),
    KeyFamily("ingestion:<ingestion>", "hash", "ingestion TTL", "daveloper.documents.catalog"),
    # event-log scope
    KeyFamily("log:{<scope>}", "stream", "log TTL after the last append", "daveloper.eventlog"),
    KeyFamily("logmeta:{<scope>}", "hash", "log TTL after the last append", "daveloper.eventlog"),
    KeyFamily("cancel:{<scope>}", "string", "log TTL", "daveloper.eventlog"),
    KeyFamily("control:{<scope>}", "channel (sharded on a cluster)", "-", "daveloper.eventlog.control"),
    KeyFamily("tail:{<scope>}", "channel (sharded on a cluster)", "-", "daveloper.eventlog.tail"),
)


@dataclass(frozen=True, slots=True)
class ScopeKeys:
    """The Redis names that belong to one event-log scope (all in the scope's hash slot)."""

    stream: str
    meta: str
    cancel: str
    #: bytes, because that is how the (non-decoding) pub/sub client reports channels
    channel: bytes
    tail: bytes

    @classmethod
    def of(cls, prefix: str, scope: str) -> ScopeKeys:
        """The names of ``scope`` under ``prefix`` (:meth:`Keys.scope`)."""
        return Keys(prefix).scope(scope)


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every key name from ``prefix`` (see :data:`FAMILIES` and the module docstring)."""

    prefix: str = DEFAULT_PREFIX

    # -- global --------------------------------------------------------------

    @property
    def config(self) -> str:
        return f"{self.prefix}config"

    @property
    def signing_secret(self) -> str:
        return f"{self.prefix}secret:session-signing"

    @property
    def session_deadlines(self) -> str:
        """The sorted set of session ids by deadline, which the sweeper walks."""
        return f"{self.prefix}sessions:expiry"

    @property
    def instances(self) -> str:
        return f"{self.prefix}instances"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

    @property
    def logs_channel(self) -> str:
        return f"{self.prefix}logs"

    @property
    def work(self) -> str:
        return f"{self.prefix}{{work}}"

    @property
    def work_data(self) -> str:
        return f"{self.prefix}{{work}}:data"

    def address_rate(self, address: str) -> str:
        return f"{self.prefix}rl:a:{address}"

    def robots(self) -> str:
        """The prefix of the robots.txt cache (the origin follows)."""
        return f"{self.prefix}robots:"

    def github_etags(self) -> str:
        """The prefix of the GitHub ETag cache (a digest follows)."""
        return f"{self.prefix}gh:etag:"

    def embeddings(self, model: str) -> str:
        """The prefix of ``model``'s embedding cache (a digest follows)."""
        return f"{self.prefix}emb:{model}:"

    # -- session scope: tag {<session id>} --------------------------------------

    def session(self, session_id: str) -> str:
        return f"{self.prefix}session:{{{session_id}}}"

    def session_rate(self, session_id: str) -> str:
        return f"{self.prefix}rl:s:{{{session_id}}}"

    def leases(self, kind: str, session_id: str) -> str:
        return f"{self.prefix}leases:{kind}:{{{session_id}}}"

    def documents(self, session_id: str) -> str:
        return f"{self.prefix}docs:{{{session_id}}}"

    def document(self, session_id: str, document_id: str) -> str:
        return f"{self.prefix}doc:{{{session_id}}}:{document_id}"

    def document_usage(self, session_id: str) -> str:
        return f"{self.prefix}docusage:{{{session_id}}}"

    def document_version(self, session_id: str) -> str:
        return f"{self.prefix}docversion:{{{session_id}}}"

    def document_clients(self, session_id: str) -> str:
        return f"{self.prefix}docclient:{{{session_id}}}"

    def document_hidden(self, session_id: str) -> str:
        return f"{self.prefix}dochidden:{{{session_id}}}"

    def ingestions(self, session_id: str) -> str:
        return f"{self.prefix}ingestions:{{{session_id}}}"

    def conversation(self, session_id: str, conversation_id: str) -> str:
        return f"{self.prefix}conv:{{{session_id}}}:{conversation_id}"

    def conversations(self, session_id: str) -> str:
        return f"{self.prefix}convs:{{{session_id}}}"

    def turn(self, session_id: str, conversation_id: str, turn_id: str) -> str:
        return f"{self.prefix}turn:{{{session_id}}}:{conversation_id}:{turn_id}"

    def turns(self, session_id: str, conversation_id: str) -> str:
        return f"{self.prefix}turns:{{{session_id}}}:{conversation_id}"

    def turn_clients(self, session_id: str, conversation_id: str) -> str:
        return f"{self.prefix}turnclient:{{{session_id}}}:{conversation_id}"

    def embedding(self, model: str, session_id: str, digest: str) -> str:
        """The cached vectors of a text the session embedded (listed in its :meth:`session_index`)."""
        return f"{self.prefix}emb:{model}:{{{session_id}}}:{digest}"

    def tool_cache(self, session_id: str, digest: str) -> str:
        return f"{self.prefix}toolcache:{{{session_id}}}:{digest}"

    def jobs(self, session_id: str) -> str:
        return f"{self.prefix}jobs:{{{session_id}}}"

    def scrape_pages(self, session_id: str, day: str) -> str:
        return f"{self.prefix}scrapepages:{{{session_id}}}:{day}"

    def scrape_seen(self, session_id: str, digest: str) -> str:
        return f"{self.prefix}scrapeseen:{{{session_id}}}:{digest}"

    def session_index(self, session_id: str) -> str:
        """The set of the session's keys whose names are digests (caches, crawl records).

        Their writers add each such key here in the same round trip (same
        slot), so the sweeper removes a session's keys from this index and
        :meth:`session_fixed`, never by scanning the keyspace.
        """
        return f"{self.prefix}sessionkeys:{{{session_id}}}"

    def index_in(self, pipe: Any, session_id: str, key: str, ttl_seconds: int) -> None:
        """Queue the registration of ``key`` (one of the session's digest-named keys) in its :meth:`session_index`.

        Same slot as ``key``, so it may share the writer's transaction. The
        index lives as long as its longest-lived member: its expiry is set
        when it has none and only ever moved later.
        """
        index = self.session_index(session_id)
        pipe.sadd(index, key)
        pipe.expire(index, ttl_seconds, nx=True)
        pipe.expire(index, ttl_seconds, gt=True)

    def session_fixed(self, session_id: str, *, today: datetime.date | None = None) -> list[str]:
        """The session's keys whose names are known without reading anything.

        The page counters are named by day and live two days: yesterday's,
        today's and tomorrow's (a clock ahead) are all there can be.
        """
        day = today or datetime.datetime.now(datetime.UTC).date()
        pages = [self.scrape_pages(session_id, f"{day + datetime.timedelta(days=d):%Y%m%d}") for d in (-1, 0, 1)]
        return [*pages, self.leases("jobs", session_id), self.leases("turns", session_id),
                self.session_index(session_id), self.session_rate(session_id), self.documents(session_id),
                self.document_usage(session_id), self.document_version(session_id),
                self.document_clients(session_id), self.document_hidden(session_id), self.ingestions(session_id),
                self.conversations(session_id), self.jobs(session_id)]

    # -- job scope -----------------------------------------------------------

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def ingestion(self, ingestion_id: str) -> str:
        return f"{self.prefix}ingestion:{ingestion_id}"

    # -- event-log scope: tag {<scope>} -------------------------------------------

    def scope(self, scope: str) -> ScopeKeys:
        """The names of one event-log scope, all in the scope's slot."""
        if not scope:
            raise InvalidArgument.field("scope", "must not be empty")
        tag = f"{{{scope}}}"
        return ScopeKeys(
            stream=f"{self.prefix}log:{tag}",
            meta=f"{self.prefix}logmeta:{tag}",
            cancel=f"{self.prefix}cancel:{tag}",
            channel=f"{self.prefix}control:{tag}".encode(),
            tail=f"{self.prefix}tail:{tag}".encode(),
        )



#: The names under the default prefix (immutable, so a safe default argument).
DEFAULT_KEYS = Keys()
