"""A Node.js client built from docs/websocket-protocol.md with only ``ws`` completes a chat turn."""

from __future__ import annotations

from pathlib import Path

from daveloper.edge import Edge
from tests.browser.conftest import run_node


async def test_node_ws_client_completes_a_chat_turn(edge: Edge, node_packages: Path) -> None:
    summary = (await run_node("ws_client.mjs", edge.url, "What do my documents say about the frobnicator?")).json()

    assert summary["sessionMatches"], summary
    assert summary["limits"]["initialCredit"] >= 1
    assert summary["headers"]
    kinds = [event["kind"] for event in summary["events"]]
    assert kinds[0] == "turnStarted", kinds
    assert kinds[-1] == "turnCompleted", kinds
    assert "toolCall" in kinds
    assert "toolResult" in kinds
    seqs = [int(event["seq"]) for event in summary["events"]]  # uint64: a JSON string
    assert seqs == sorted(set(seqs)), seqs
    # A session without documents: the offline provider says it found nothing, as a full turn.
    assert summary["deltas"] >= 2
    assert summary["text"] == summary["completedText"]
    assert "Nothing in this session's documents" in summary["text"]
    assert summary["finishReason"] == "FINISH_REASON_STOP"
    # More events than the initial credit of 4 arrived, so the client's credit grants were honoured.
    assert len(kinds) > 4
    assert summary["creditsGranted"] >= len(kinds) - 4
    assert summary["status"] == {"code": "ok"}
    assert summary["frames"]["close"] == 1
    assert summary["closeCode"] == 1000
