"""The chat page in a real Chromium against the real edge and app (scenarios: page_scenarios.cjs).

Each test fails on any console error, page error or failed request, so a CSP violation
(an inline script or style, a foreign origin) fails it too.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import aiohttp

from daveloper.edge import Edge
from tests.browser.conftest import CSP, SITE_PAGES, SLOW_PAGE_SECONDS, Site, run_node


async def scenario(name: str, edge: Edge, argument: str = "") -> dict[str, Any]:
    result: dict[str, Any] = (await run_node("page_scenarios.cjs", name, edge.url, argument)).json()
    assert result["consoleErrors"] == [], result["consoleErrors"]
    assert result["pageErrors"] == [], result["pageErrors"]
    assert result["failedRequests"] == [], result["failedRequests"]
    assert result["cspHeader"] == CSP
    assert result["screenshotBytes"] > 0
    return result


async def conversation(http: aiohttp.ClientSession, edge: Edge, token: str, conversation_id: str) -> dict[str, Any]:
    """GetConversation over HTTP/JSON: what the server stored, independent of the page."""
    async with http.post(f"{edge.url}/daveloper.v1.AgentService/GetConversation",
                         json={"conversationId": conversation_id},
                         headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_page_creates_a_session_uploads_and_streams_a_cited_answer(
        edge: Edge, chromium: Path, http: aiohttp.ClientSession) -> None:
    result = await scenario("chat", edge)

    # The page created a session and shows it; its token is in localStorage.
    async with http.post(f"{edge.url}/daveloper.v1.SessionService/GetSession", json={},
                         headers={"Authorization": f"Bearer {result['token']}"}) as response:
        assert response.status == 200
        assert (await response.json())["session"]["id"] == result["session"]
    # A reload reuses it over a single socket; a refused token is replaced by a new session's.
    assert result["sessionAfterReload"] == result["session"]
    assert result["socketsForReload"] == 1
    assert result["sessionAfterRefusal"] != result["session"]
    assert len(result["sessionAfterRefusal"]) >= 8
    assert result["tokenAfterRefusal"] not in ("not-a-valid-token", result["token"])
    uploaded = result["uploaded"]
    assert uploaded["progress"] == {"value": 100, "max": 100}
    assert len(set(uploaded["progressValues"])) >= 3, uploaded["progressValues"]  # driven by progress events
    assert uploaded["progressValues"] == sorted(uploaded["progressValues"])
    assert any("Frobnicator guide" in doc or "frobnicator" in doc for doc in uploaded["documents"])

    turn = result["turn"]
    assert turn["state"] == "completed", turn
    assert "every 42 seconds" in turn["answer"]
    assert "[1]" in turn["answer"]
    assert turn["citations"], turn
    assert turn["citations"][0].startswith("[1] "), turn["citations"]
    assert any("search_documents" in call for call in turn["toolCalls"]), turn["toolCalls"]
    assert turn["toolResults"], turn
    assert turn["verified"] == "true"  # the deltas add up to the completed text
    assert turn["ariaLive"] == "polite"
    assert turn["ariaBusy"] == "false"
    # The answer grew in several steps, each a prefix of the next: it streamed.
    steps = result["answerSteps"]
    assert len(steps) >= 3, steps
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(steps))
    assert steps[-1] == turn["answer"]

    stored = await conversation(http, edge, result["token"], result["conversationId"])
    assert stored["turns"][-1]["assistantText"] == turn["answer"]


async def test_stop_cancels_the_running_turn(edge: Edge, chromium: Path, site: Site,
                                             http: aiohttp.ClientSession) -> None:
    # The question names a URL, so the offline provider calls scrape_url on it; the page answers
    # only after SLOW_PAGE_SECONDS, so the turn is reliably still running when Stop is pressed.
    result = await scenario("stop", edge, f"{site.url}/slow")

    assert result["runningBeforeStop"] == "running"
    assert result["stopEnabled"]
    turn = result["turn"]
    assert any("scrape_url" in call for call in turn["toolCalls"]), turn["toolCalls"]
    assert turn["state"] == "cancelled", turn
    assert result["stoppedAfterMs"] < SLOW_PAGE_SECONDS * 1000 / 2
    assert result["stopDisabledAfter"]
    # Stop is a ChatRequest.cancel on the Chat stream, naming the running turn.
    [cancel] = [frame["message"]["cancel"] for frame in result["cancelFrames"]]
    assert cancel["conversationId"] == result["conversationId"]
    assert cancel["turnId"]

    stored = await conversation(http, edge, result["token"], result["conversationId"])
    assert stored["turns"][-1]["id"] == cancel["turnId"]
    assert stored["turns"][-1]["finishReason"] == "FINISH_REASON_CANCELLED"


async def test_answer_resumes_after_the_connection_drops(edge: Edge, chromium: Path,
                                                          http: aiohttp.ClientSession) -> None:
    result = await scenario("resume", edge)

    dropped, turn = result["dropped"], result["turn"]
    assert dropped, "the socket was dropped after the first piece of the answer"
    assert dropped["text"]
    assert "reconnecting" in result["statuses"], result["statuses"]
    assert result["statuses"][-1] == "connected", result["statuses"]
    assert result["socketsOpened"] >= 1  # a new socket after the drop
    # It resumed with Watch from the last seq it had rendered.
    assert [frame["message"]["afterSeq"] for frame in result["watchFrames"]] == [str(dropped["lastSeq"])]
    assert turn["state"] == "completed", turn
    assert turn["answer"].startswith(dropped["text"])
    assert len(turn["answer"]) > len(dropped["text"])
    assert turn["verified"] == "true"

    # Exactly the server's answer: nothing missing, nothing twice.
    stored = await conversation(http, edge, result["token"], result["conversationId"])
    assert turn["answer"] == stored["turns"][-1]["assistantText"]


async def test_scrape_fills_the_log(edge: Edge, chromium: Path, site: Site) -> None:
    result = await scenario("scrape", edge, f"{site.url}/docs/")

    log = result["log"]
    fetched = [line["text"] for line in log if line["kind"] == "page-fetched"]
    for path, (title, _, _) in SITE_PAGES.items():
        assert any(f"{site.url}{path} " in line and title in line for line in fetched), (path, fetched)
    [finished] = [line["text"] for line in log if line["kind"] == "finished"]
    assert finished.startswith("finished: succeeded, 3 fetched"), finished
    assert log[-1]["kind"] == "finished"
    # Progress events drive the job's counts and bar rather than log lines.
    assert result["jobState"] == "succeeded"
    assert result["jobCounts"].startswith("3 fetched, 0 skipped, 0 failed, 3 ingested"), result["jobCounts"]
    assert result["jobBar"]["value"] == result["jobBar"]["max"] > 0
    assert len(result["documents"]) >= 3  # ingested
    assert result["scrapeButtonEnabled"]


async def test_client_module_calls_errors_flow_control_and_close(edge: Edge, chromium: Path) -> None:
    result = await scenario("client", edge)

    assert result["session"]
    assert result["limits"]["initialCredit"] == 16
    assert result["pingMs"] >= 0
    not_found = result["notFound"]
    assert not_found["isRpcError"]
    assert not_found["name"] == "RpcError"
    assert not_found["code"] == "not_found"
    assert "google.rpc.ErrorInfo" in not_found["detailTypes"]
    assert not_found["reason"]  # decoded from the ErrorInfo bytes, not from `debug`
    assert result["unknownMethod"]["code"] == "unimplemented"
    assert result["unknownMethod"]["reason"] == "UNKNOWN_METHOD"
    assert result["refusedToken"]["name"] == "ConnectionClosed"
    assert result["refusedToken"]["closeCode"] == 4401
    chat = result["chat"]
    assert chat["status"]["code"] == "ok"
    assert chat["kinds"][0] == "turnStarted"
    assert chat["kinds"][-1] == "turnCompleted"
    assert len(chat["kinds"]) > 4  # more than one credit's worth: the client granted as it consumed
    assert chat["text"] == result["completedText"]
    assert result["emptyText"]["code"] == "invalid_argument"
    assert "google.rpc.BadRequest" in result["emptyText"]["detailTypes"]
    assert result["cancelled"]["code"] == "canceled"
    assert [int(seq) for seq in result["watchSeqs"]] == list(range(1, len(chat["kinds"]) + 1))
    assert result["closeInfo"] == {"code": 1000, "reason": "closed by client", "byClient": True}
    assert result["afterClose"]["code"] == "unavailable"
