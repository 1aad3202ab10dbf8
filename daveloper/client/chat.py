"""``daveloper chat``: one turn, or a loop of turns, streamed to the terminal.

Each turn is one ``AgentService/Chat`` stream with a deadline: the message
goes out, token deltas are written as they arrive, tool calls are noted on
stderr, citations are listed when the turn completes. Ctrl-C sends a cancel
over the same stream and waits for the turn to end (the server keeps the
partial answer); a second Ctrl-C quits. A message the server refuses before the
turn starts (rate limit, saturated server: ``RetryInfo``) is sent again after the
delay it asks for, with the same ``client_message_id``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from daveloper.client.connection import CommandFailed, Connection, describe_failure, translate_errors
from daveloper.client.retry import MayRetry, retrying
from daveloper.client.terminal import Interrupts, StdinLines, Terminal
from generated.daveloper.v1 import (
    AgentServiceStub,
    CancelTurnRequest,
    ChatEvent,
    ChatRequest,
    Citation,
    FinishReason,
    SendMessage,
)

__all__ = ["chat"]

_EXIT_CANCELLED = 130
_TOOL_ARGUMENTS_SHOWN = 120


@dataclass
class _Turn:
    """What the terminal has seen of one turn."""

    conversation_id: str
    turn_id: str = ""
    cancel_requested: bool = False
    cancel_sent: bool = False
    wrote_text: bool = False
    citations: dict[int, Citation] = field(default_factory=dict)
    finish: FinishReason | None = None
    failure: str = ""


def _citation_line(citation: Citation) -> str:
    line = f"[{citation.index}] {citation.title or citation.document_id}"
    # Only scraped pages and GitHub files have a URL; a document's title already names its section.
    return f"{line} ({citation.location.url})" if citation.location is not None and citation.location.url else line


class _TurnView:
    """Renders one turn's events and sends its cancel."""

    def __init__(self, terminal: Terminal, turn: _Turn, requests: asyncio.Queue[ChatRequest | None]) -> None:
        self.terminal = terminal
        self.turn = turn
        self._requests = requests

    def interrupt(self, interrupts: Interrupts) -> None:
        if self.turn.cancel_requested:
            interrupts.quit()
            return
        self.turn.cancel_requested = True
        self.terminal.note("^C cancelling the turn (Ctrl-C again to quit)", dim=True)
        self._send_cancel()

    def _send_cancel(self) -> None:
        if self.turn.turn_id and not self.turn.cancel_sent:  # before TurnStarted there is no id yet
            self.turn.cancel_sent = True
            self._requests.put_nowait(ChatRequest(cancel=CancelTurnRequest(
                conversation_id=self.turn.conversation_id, turn_id=self.turn.turn_id)))

    def show(self, event: ChatEvent) -> bool:
        """Render one event; True when it ends the turn."""
        turn, terminal = self.turn, self.terminal
        if event.turn_started is not None:
            turn.conversation_id, turn.turn_id = event.conversation_id, event.turn_id
            if turn.cancel_requested:
                self._send_cancel()
        elif event.token_delta is not None:
            terminal.write(event.token_delta.text)
            turn.wrote_text = True
        elif event.tool_call is not None:
            arguments = event.tool_call.arguments_json
            if len(arguments) > _TOOL_ARGUMENTS_SHOWN:
                arguments = arguments[:_TOOL_ARGUMENTS_SHOWN] + "…"
            self._break_line()
            terminal.note(f"→ {event.tool_call.name} {arguments}", dim=True)
        elif event.tool_result is not None:
            result = event.tool_result
            self._break_line()
            terminal.note(f"← {result.name}: {'error' if result.is_error else 'done'}", dim=True)
        elif event.citation is not None:
            turn.citations[event.citation.index] = event.citation
        elif event.turn_completed is not None:
            turn.finish = event.turn_completed.finish_reason
            return True
        elif event.turn_failed is not None:
            failure = event.turn_failed.failure
            turn.failure = describe_failure(failure) if failure is not None else "the turn failed"
            return True
        return False

    def _break_line(self) -> None:
        if self.turn.wrote_text:
            self.terminal.line()
            self.turn.wrote_text = False

    def finish(self) -> None:
        self._break_line()
        for index in sorted(self.turn.citations):
            self.terminal.line(_citation_line(self.turn.citations[index]))


async def _turn(connection: Connection, terminal: Terminal, interrupts: Interrupts,
                conversation_id: str, text: str) -> _Turn:
    """One turn; a message refused for now is sent again with the same ``client_message_id``."""
    message_id = uuid.uuid4().hex

    def waiting(exc: MayRetry, seconds: float) -> None:
        terminal.note(f"{exc}; retrying in {seconds:.1f}s", dim=True)

    return await retrying(lambda: _send(connection, terminal, interrupts, conversation_id, text, message_id),
                          connection.retry, waiting)


async def _send(connection: Connection, terminal: Terminal, interrupts: Interrupts,
                conversation_id: str, text: str, message_id: str) -> _Turn:
    requests: asyncio.Queue[ChatRequest | None] = asyncio.Queue()
    requests.put_nowait(ChatRequest(send=SendMessage(conversation_id=conversation_id, text=text,
                                                     client_message_id=message_id)))

    async def outgoing() -> AsyncIterator[ChatRequest]:
        while (request := await requests.get()) is not None:
            yield request

    view = _TurnView(terminal, _Turn(conversation_id), requests)
    stub = AgentServiceStub(connection.channel)
    seen = False
    try:
        with interrupts.handling(lambda: view.interrupt(interrupts)), \
                translate_errors(connection.options.server, "chat"):
            try:
                async for response in stub.chat(outgoing(), timeout=connection.timeout, metadata=connection.metadata):
                    seen = True
                    if response.event is not None and view.show(response.event):
                        requests.put_nowait(None)  # half-close: the server then ends the stream
            finally:
                view.finish()
    except CommandFailed as exc:
        # Refused before any event: the turn was not admitted, and the resend (same client message
        # id) is idempotent. After an event, a resend would replay what the terminal already shows.
        if seen or view.turn.cancel_requested:
            exc.final()
        raise
    if view.turn.finish is None and not view.turn.failure:
        raise CommandFailed("chat failed: the stream ended before the turn did")
    return view.turn


def _report(terminal: Terminal, turn: _Turn) -> int:
    """Say how a turn ended; its exit status."""
    if turn.failure:
        terminal.note(f"daveloper: the turn failed: {turn.failure}")
        return 1
    if turn.finish is FinishReason.CANCELLED:
        terminal.note("turn cancelled")
        return _EXIT_CANCELLED
    if turn.finish is FinishReason.INTERRUPTED:
        terminal.note("daveloper: the turn was interrupted (the server stopped); ask again")
        return 1
    if turn.finish is FinishReason.LENGTH:
        terminal.note("(the answer reached the token limit)", dim=True)
    elif turn.finish is FinishReason.TOOL_LIMIT:
        terminal.note("(the agent reached its tool-call limit)", dim=True)
    return 0


async def chat(connection: Connection, terminal: Terminal, interrupts: Interrupts, *,
               conversation_id: str = "", message: str | None = None) -> int:
    """One turn when ``message`` is given, else a turn per line of stdin until its end."""
    if message is not None:
        if not message.strip():
            raise CommandFailed("the message is empty", exit_code=2)
        return _report(terminal, await _turn(connection, terminal, interrupts, conversation_id, message))
    lines = StdinLines()
    status = 0
    if terminal.interactive:
        terminal.note("Ask away; an empty line does nothing, Ctrl-D ends, Ctrl-C cancels a turn.", dim=True)
    while True:
        if terminal.interactive:
            terminal.err.write("> ")
            terminal.err.flush()
        text = await lines.next()
        if text is None:
            return status
        if not text.strip():
            continue
        try:
            turn = await _turn(connection, terminal, interrupts, conversation_id, text)
        except CommandFailed as exc:
            terminal.note(f"daveloper: {exc.message}")
            status = 1
            continue
        if not conversation_id:
            conversation_id = turn.conversation_id
            terminal.note(f"(conversation {conversation_id})", dim=True)
        status = 1 if _report(terminal, turn) == 1 else 0
