"""The agent subsystem started: the chat model behind its breaker, conversations, tools, turns, ``AgentService``.

:func:`open_agent` opens it on a :class:`~daveloper.infra.core.Core`, with the
documents and the scraper as its tools, and closes it in reverse. The LLM's
health probe (:attr:`Agent.probe`) is advisory: only ``AgentService`` follows
it. As a holder of session data it purges a session's conversations and counts
its concurrent turns.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from daveloper.agent.conversations import Conversations
from daveloper.agent.llm import make_chat_model
from daveloper.agent.llm.guarded import GuardedChatModel, is_model_failure
from daveloper.agent.model import ChatModel
from daveloper.agent.tools import Toolbox
from daveloper.agent.turns import DEFAULT_SYSTEM_PROMPT, Agent, AgentSettings
from daveloper.breaker import BreakerProbe, CircuitBreaker
from daveloper.documents.subsystem import Documents
from daveloper.documents.versions import current_chunks
from daveloper.infra.core import Core
from daveloper.leases import LeaseSet
from daveloper.rpc import Authenticator
from daveloper.scraper.subsystem import Scraper
from daveloper.scraper.tools import WebTools
from daveloper.servicers.agent import AgentService, purge_conversations
from daveloper.usage import QuotaReading, count_leases

__all__ = ["Chat", "open_agent"]


@dataclass(frozen=True, slots=True)
class Chat:
    """The running agent subsystem (see the module docstring)."""

    core: Core
    agent: Agent
    conversations: Conversations
    turn_leases: LeaseSet
    #: The ``llm`` health probe: the model's breaker, and the endpoint itself if configured.
    probe: BreakerProbe
    #: ``AgentService``, with the health probes it follows.
    services: dict[object, tuple[str, ...]]

    @property
    def quotas(self) -> Sequence[QuotaReading]:
        runtime = self.core.runtime
        return [count_leases(self.turn_leases.key, "concurrent_turns", lambda: runtime.count("quota_concurrent_turns"))]

    async def purge_session(self, session_id: str) -> None:
        """Every conversation of the session, with its event log."""
        await purge_conversations(self.conversations, self.core.events, session_id)


def _agent_settings(core: Core) -> AgentSettings:
    settings = core.settings
    return AgentSettings(system_prompt=settings.system_prompt or DEFAULT_SYSTEM_PROMPT,
                         max_tool_rounds=settings.max_tool_rounds, model=settings.llm_model,
                         coalesce_chars=settings.coalesce_chars, coalesce_seconds=settings.coalesce_ms / 1000,
                         owner=settings.instance_id, provider=settings.chat_provider,
                         max_concurrent_turns=settings.quota_concurrent_turns,
                         max_running_turns=settings.max_running_turns, max_starting_turns=settings.max_starting_turns)


@contextlib.asynccontextmanager
async def open_agent(core: Core, auth: Authenticator, documents: Documents, scraper: Scraper, *,
                     chat_model: ChatModel | None = None) -> AsyncIterator[Chat]:
    """Start the agent on ``core`` (``chat_model`` replaces the configured provider); close in reverse."""
    settings, redis, prefix = core.settings, core.redis, core.settings.redis_prefix
    async with contextlib.AsyncExitStack() as stack:
        breaker = CircuitBreaker("llm", failures=settings.breaker_failures,
                                 reset_seconds=settings.breaker_reset_seconds, classify=is_model_failure,
                                 metrics=core.metrics)
        llm = chat_model or make_chat_model(settings.chat_provider, base_url=settings.llm_base_url,
                                            api_key=settings.llm_api_key, model=settings.llm_model,
                                            redactor=core.redactor)
        model = GuardedChatModel(llm, breaker, first_event_seconds=settings.llm_first_event_seconds)
        if (close_model := getattr(model, "aclose", None)) is not None:
            stack.push_async_callback(close_model)
        # Only the OpenAI-wire model has an endpoint to probe (checked by name: its SDK loads lazily).
        ping = getattr(llm, "ping", None) if settings.llm_probe_seconds else None
        probe = BreakerProbe("llm", breaker, request=ping, every=settings.llm_probe_seconds)
        catalog, chunk_store = documents.catalog, documents.chunk_store
        tools = Toolbox(
            search=documents.search, redis=redis, enabled=core.runtime.tool_enabled, prefix=prefix,
            document_version=catalog.version_key,
            web=WebTools(runner=scraper.runner, crawler=scraper.crawler, github=scraper.github,
                         chunks=lambda session_id, document_id, limit: current_chunks(
                             catalog, chunk_store, session_id, document_id, limit)),
        )
        conversations = Conversations(redis, prefix=prefix)
        turn_leases = LeaseSet(redis, "turns", ttl_seconds=600, prefix=prefix)
        agent = Agent(events=core.events, conversations=conversations, model=model, jobs=core.jobs,
                      leases=turn_leases, work=core.work, limits=core.runtime.count, metrics=core.metrics,
                      tools=tools, settings=_agent_settings(core))
        core.work.on_orphan("turn", agent.fail_orphan)
        service = AgentService(auth=auth, agent=agent, conversations=conversations, events=core.events,
                               heartbeat_seconds=settings.heartbeat_seconds)
        yield Chat(core, agent, conversations, turn_leases, probe, {service: ("redis", "qdrant", "llm")})
