"""The durable event log every long-running job writes to (chat turns, ingestions, scrapes).

A *scope* (a conversation turn, an ingestion job, ...) owns one append-only log
of opaque payloads (serialized protobuf events). The log assigns each payload
its sequence number: 1, 2, 3, ... per scope, without gaps, however many
writers in however many processes append. Readers replay from a cursor
(``after_seq``) and then tail live, so a client that drops reconnects to any
instance with the last seq it saw and gets exactly the events it missed.

Keys (named by :mod:`daveloper.keys`; ``prefix`` defaults to ``dv:``)::

    dv:log:{<scope>}      stream; entry id "<seq>-0", fields p=payload, f=1 on the final entry
    dv:logmeta:{<scope>}  hash; last = last assigned seq, final = seq of the final entry
    dv:cancel:{<scope>}   string; durable cancel request
    dv:control:{<scope>}  pub/sub channel; "cancel" notices for the scope's owner
    dv:tail:{<scope>}     pub/sub channel; the entries each append stored (see ``tail.py``)

The scope is the hash tag, so on a Redis/Valkey Cluster a scope's keys and
channels share one slot: the append and cancel scripts touch only that slot,
and publish with ``SPUBLISH`` (sharded channels) there; one server uses
``PUBLISH``/``SUBSCRIBE``.

Each append refreshes the TTL of the stream and its meta hash, so a scope
disappears ``ttl_seconds`` after its last event.
"""

from daveloper.eventlog.log import Entry, EventLog

__all__ = ["Entry", "EventLog"]
