"""Every flow of the chat page, end to end in one Chromium against one real server (flows: page_flows.cjs).

One app and edge, one browser and one Node process for all flows, to keep the run short. The
model is a local OpenAI-compatible server (:class:`FakeOpenAI`, the real SSE wire format) that
answers by the question's keyword: Markdown with code, a table and citations after a real
``search_documents`` call, an XSS corpus, a slow answer (for reload, stop, a dropped and a silent
socket), a short one otherwise. Documents, search, conversations, jobs, sessions and rate limits are
the real services. ``DAVELOPER_SCREENSHOTS=<dir>`` also saves each flow in light, dark and 375 px
wide (scripts/screenshots).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from daveloper.app import open_app
from daveloper.config import Address, Settings
from daveloper.edge import open_edge
from tests.agent.openai_server import FakeOpenAI, Script, ScriptedCall
from tests.browser.conftest import ARTIFACTS, CSP, run_node
from tests.scraper.github_server import FakeGitHub

pytestmark = pytest.mark.timeout(150)

#: At most this long, the slow site's pages wait for the flow to release them (``GET /release``),
#: so that a reload surely lands while the crawl runs.
SLOW_CRAWL_SECONDS = 20.0

MARKDOWN_ANSWER = [
    "## Frobnicator", " summary\n\n",
    "The frobnicator rotates the widget queue **every 42 seconds** [1]", " and pauses it when it overheats [2].\n\n",
    "- restart it with `frobnicate`\n", "- watch the *frobnicator log*\n", "  1. nested step\n\n",
    "| setting | value |\n", "|---|---:|\n", "| rotation | 42 s |\n", "| pause | 10 min |\n\n",
    "```python\n", "def rotate(queue):\n", "    # every 42 seconds\n", "    return queue[1:] + queue[:1]\n", "```\n\n",
    "See [the guide](https://example.org/guide) for more.",
]

#: Markup that would run or load something if the page used innerHTML, or followed unsafe links.
XSS = [
    "<script>window.__xss = 'script'</script>",
    "<img src=x onerror=\"window.__xss='img'\">",
    "<svg onload=\"window.__xss='svg'\"></svg>",
    "<iframe src=\"javascript:window.__xss='iframe'\"></iframe>",
    "[click me](javascript:window.__xss='link')",
    "![pic](http://203.0.113.9/tracker.png)",
    "<a href=\"javascript:alert(1)\">anchor</a>",
    "\"><b onmouseover=\"window.__xss='attr'\">x</b>",
    "`<img src=x onerror=alert(1)>`",
    "```html\n<script>alert('fenced')</script>\n```",
]
XSS_ANSWER = ["Here is some markup:\n\n", *(line + "\n\n" for line in XSS), "The end [1]."]
XSS_FILE_NAME = "<img src=x onerror=alert(1)>.md"

SLOW_ANSWER = Script(text=[f"Part {i} of a slow answer. " for i in range(30)], delay=0.1)


class KeyedModel(FakeOpenAI):
    """The fake model, answering by a keyword of the turn's question."""

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()  # aiohttp keeps the body: the base class reads it again
        messages = body.get("messages", [])
        question = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        after_tool = bool(messages) and messages[-1].get("role") == "tool"
        self.enqueue(self.answer(question.lower(), after_tool))
        return await super()._chat_completions(request)

    @staticmethod
    def answer(question: str, after_tool: bool) -> Script:
        if "sources" in question:
            _, about, topic = question.partition("sources about ")
            topic = topic if about else "frobnicator widget queue"
            if not after_tool:
                return Script(tool_calls=[ScriptedCall("search_documents", [json.dumps({"query": topic})])])
            if "frobnicator" in topic:
                return Script(text=MARKDOWN_ANSWER, delay=0.03)
            return Script(text=["It says so [1]."])
        if "markup" in question:
            return Script(text=XSS_ANSWER, delay=0.01)
        if "slow" in question:  # a search first, so a reload has a tool call to show again
            if not after_tool:
                return Script(tool_calls=[ScriptedCall("search_documents", ['{"query": "widget queue"}'])])
            return SLOW_ANSWER
        return Script(text=["A short answer", " to: ", question[:40], "."])


@dataclass
class Site:
    url: str
    host_port: str


@contextlib.asynccontextmanager
async def local_site() -> AsyncIterator[Site]:
    """Docs to crawl: ``/docs/`` (three quick pages), ``/slowdocs/`` (pages that wait for ``/release``), ``/stuck``."""
    pages = {
        "/docs/": ("Widget docs", "Start here to learn about widgets.", ["/docs/install", "/docs/usage"]),
        "/docs/install": ("Installing widgets", "Install the widget with the package manager.", ["/docs/usage"]),
        "/docs/usage": ("Using widgets", "Call the widget twice a day for best results.", ["/docs/"]),
        "/slowdocs/": ("Slow docs", "An index of slow pages.", ["/slowdocs/a", "/slowdocs/b"]),
        "/slowdocs/a": ("Slow page A", "This page took a while to arrive.", []),
        "/slowdocs/b": ("Slow page B", "So did this one, eventually.", []),
    }
    release, slow_pages = asyncio.Event(), asyncio.Event()

    async def page(request: web.Request) -> web.Response:
        title, text, links = pages[request.path]
        if request.path.startswith("/slowdocs/") and request.path != "/slowdocs/":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slow_pages.wait(), SLOW_CRAWL_SECONDS)
        anchors = "".join(f'<a href="{href}">{href}</a> ' for href in links)
        return web.Response(text=f"<!doctype html><title>{title}</title><h1>{title}</h1><p>{text}</p>{anchors}",
                            content_type="text/html")

    async def stuck(request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 60)
        return web.Response(text="<title>late</title>", content_type="text/html")

    application = web.Application()
    for path in pages:
        application.router.add_get(path, page)
    async def release_slow_pages(request: web.Request) -> web.Response:
        slow_pages.set()
        return web.Response(text="released")

    application.router.add_get("/stuck", stuck)
    application.router.add_get("/release", release_slow_pages)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield Site(url=f"http://127.0.0.1:{port}", host_port=f"127.0.0.1:{port}")
    finally:
        release.set()
        await runner.cleanup()


async def rpc(http: aiohttp.ClientSession, base: str, token: str, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """An HTTP/JSON call: what the server has, independent of the page."""
    async with http.post(f"{base}/daveloper.v1.{method}", json=body,
                         headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.json()


async def test_every_flow_of_the_page(settings: Settings, redis: aioredis.Redis, chromium: Path,
                                      http: aiohttp.ClientSession) -> None:
    screenshots = os.environ.get("DAVELOPER_SCREENSHOTS", "")
    async with KeyedModel(api_key="sk-test") as llm, local_site() as site, FakeGitHub() as github:
        configured = settings.replace(
            github_api_url=github.url, github_token=github.token,
            llm_provider="openai", llm_base_url=llm.url, llm_api_key="sk-test", coalesce_chars=0,
            heartbeat_seconds=1.0, rate_chat_turns="12/h", scrape_allow=(site.host_port,),
            edge_addr=Address("127.0.0.1", 0))
        async with open_app(configured) as app, \
                open_edge(configured, upstreams=[app.grpc_addr], health=app.health) as edge:
            run = await run_node("page_flows.cjs", edge.url, site.url, screenshots, limit=120)
            result: dict[str, Any] = run.json()
            (ARTIFACTS / "flows.json").write_text(json.dumps(result, indent=1))  # for reading a failure
            stored = {key: await rpc(http, edge.url, where["token"], "AgentService/GetConversation",
                                     {"conversationId": where["id"]})
                      for key, where in result["conversations"].items()}
            jobs = (await rpc(http, edge.url, result["token"], "ScraperService/ListJobs", {}))[1]

    # Nothing went wrong on the page, and it asked nothing of any other origin.
    assert result["consoleErrors"] == [], result["consoleErrors"]
    assert result["pageErrors"] == [], result["pageErrors"]
    assert result["cspHeader"] == CSP
    origin = urlsplit(edge.url).netloc
    assert result["requests"], "requests were recorded"
    assert {urlsplit(url).netloc for url in result["requests"]} == {origin}, result["requests"]
    assert all(urlsplit(url).scheme in ("http", "ws") for url in result["requests"])

    check_renderer(result["renderer"])
    check_documents(result["documents"])
    check_answer(result["answer"], stored["answer"])
    check_xss(result["xss"])
    check_conversations(result["conversationsFlow"], stored)
    check_reload(result["reload"], stored["reload"])
    check_states(result["states"], stored["states"])
    check_stall(result["stall"], stored["stall"], stored["quiet"])
    check_rate_limit(result["rateLimit"])
    check_jobs(result["jobs"], jobs, site)


def check_renderer(flow: dict[str, Any]) -> None:
    assert flow["dangerous"] == [], flow["dangerous"]
    assert flow["xss"] is None
    # Only http(s) links survive; the quote in the URL stays inside the href.
    assert flow["hrefs"] == ["https://203.0.113.9/pixel.png", "https://ok.example/\"onmouseover=\"window.__xss=9",
                             "https://ok.example/"], flow["hrefs"]
    assert flow["nested"] == "<ul><li>a<ul><li>b<ol><li>c</li></ol></li></ul></li><li>d</li></ul>", flow["nested"]
    assert flow["ordered"] == '<ol start="3"><li>three</li><li>four</li></ol>', flow["ordered"]
    assert "<td>a|b</td>" in flow["table"], flow["table"]
    assert "<th class" not in flow["table"]
    assert flow["openFence"].startswith("<figure>"), flow["openFence"]  # an unfinished fence is already code
    assert '<code data-language="js"><span>const</span> a = <span>1</span>;</code>' in flow["openFence"]
    assert flow["openBold"] == "<p>so **bol</p>"  # a half-typed ** is text until it closes
    assert flow["heading"] == "<h3>Title</h3><p>text under it</p>", flow["heading"]
    assert flow["quote"] == "<blockquote><p>quoted</p><ul><li>item</li></ul></blockquote>", flow["quote"]
    assert flow["softBreak"] == "<p>one\ntwo</p>"


def check_documents(flow: dict[str, Any]) -> None:
    # Three files picked at once and one dropped: each with its own bar, driven by progress events.
    assert flow["uploadStates"] == ["stored"] * 4, flow["uploadStates"]
    for values in flow["progressValues"]:
        assert values == sorted(values), values
        assert values[-1] == 100, values
    assert max(len(set(values)) for values in flow["progressValues"]) >= 3, flow["progressValues"]
    names = flow["documentNames"]
    assert "Frobnicator guide" in names, names
    assert any("dropped" in name for name in names), names
    meta = flow["guideMeta"]
    for fact in ("frobnicator.md", "Markdown", " B", "1 chunk", "v1", "just now"):
        assert fact in meta, meta
    # Search finds the passage and says where it is.
    assert "Frobnicator guide" in flow["searchHits"][0], flow["searchHits"]
    assert "overheats" in flow["searchPassage"]
    # Delete removes the dropped one.
    assert flow["afterDelete"] == flow["beforeDelete"] - 1
    assert not any("dropped" in name for name in flow["namesAfterDelete"])
    assert "Documents3 of 500" in flow["usage"], flow["usage"]
    # A socket lost while the server processes an upload: the page follows it to the end.
    resumed = flow["resumedUpload"]
    assert resumed["droppedAt"], resumed
    assert resumed["resumed"] == "true", resumed
    assert resumed["state"] == "stored", resumed
    assert resumed["status"].startswith("stored: "), resumed


def check_answer(flow: dict[str, Any], stored: tuple[int, Any]) -> None:
    status, conversation = stored
    assert status == 200
    turn = conversation["turns"][0]  # the markup answer (flow xss) follows it in the same conversation
    assert flow["state"] == "completed", flow
    assert flow["verified"] == "true", flow
    shape = flow["shape"]
    assert shape["headings"] >= 1
    assert shape["strong"] >= 1
    assert shape["em"] >= 1
    assert shape["listItems"] >= 3
    assert shape["nestedLists"] >= 1
    assert shape["tableHeaders"] == ["setting", "value"]
    assert shape["tableCells"] == 4
    assert shape["rightAligned"] == 3  # the header cell and both rows
    assert shape["codeLanguage"] == "python"
    assert "def rotate(queue):" in shape["code"]
    assert shape["keywordTokens"] >= 2
    assert shape["commentTokens"] == 1
    assert shape["links"] == ["https://example.org/guide"]
    assert flow["copied"] == shape["code"]
    assert flow["streamedRenders"] >= 5  # rendered while streaming, not once at the end
    assert flow["codeWhileStreaming"]  # the code block showed before the answer completed
    # [n] markers link to sources with their passage and location.
    assert flow["markers"] == ["[1]", "[2]"], flow["markers"]
    assert [c["index"] for c in turn["citations"]] == [1, 2]
    first = flow["firstSource"]
    assert first["open"]
    assert first["focused"]
    assert first["summary"].startswith("[1] ")
    assert turn["citations"][0]["snippet"][:30] in first["passage"]
    assert first["origin"].startswith("From the document"), first
    assert "lines " in first["origin"], first
    # The tool call is one collapsed line, expandable to its arguments and result.
    tool = flow["tool"]
    assert not tool["openBefore"]
    assert tool["openAfter"]
    assert "search_documents" in tool["summary"]
    assert "\n" not in tool["summary"].strip()
    assert "frobnicator widget queue" in tool["arguments"]
    assert "frobnicator" in tool["result"].lower()


def check_xss(flow: dict[str, Any]) -> None:
    assert flow["state"] == "completed"
    assert flow["xssFlag"] is None
    assert flow["dialogs"] == []  # no alert or prompt ever opened
    assert flow["dangerous"] == [], flow["dangerous"]
    # The markup is shown as text, in the answer, the document list, search results and sources.
    assert "<script>window.__xss = 'script'</script>" in flow["answerText"]
    assert "<img src=x onerror=alert(1)>" in flow["answerText"]
    assert "frobnicator notes" in flow["documentNames"]  # the title, from its heading
    assert any(meta.startswith(XSS_FILE_NAME) for meta in flow["documentMetas"]), flow["documentMetas"]
    assert "click me" in flow["answerText"]
    assert flow["unsafeLinks"] >= 1


def check_conversations(flow: dict[str, Any], stored: dict[str, tuple[int, Any]]) -> None:
    first, second = flow["first"], flow["second"]
    assert flow["urlAfterFirst"].endswith(f"?c={first}")
    assert flow["urlAfterSecond"].endswith(f"?c={second}")
    assert flow["sidebarAfterSecond"][:2] == [second, first]
    assert flow["titles"][0].startswith("hello")
    assert flow["back"]["url"].endswith(f"?c={first}")
    assert flow["back"]["turns"] >= 1
    assert flow["back"]["hasTable"]
    assert flow["back"]["sources"] == 2
    assert flow["back"]["title"] == "Show the frobnicator sources in detail · Daveloper"  # in the history list too
    assert flow["forward"]["url"].endswith(f"?c={second}")
    assert flow["forward"]["title"] == "hello there · Daveloper"
    assert flow["forward"]["userTexts"] == ["hello there"]
    assert flow["afterReload"]["userTexts"] == ["hello there"]
    assert flow["activeAfterReload"] == second
    assert second not in flow["sidebarAfterDelete"]
    assert flow["urlAfterDelete"].endswith("/")
    status, _ = stored["deleted"]
    assert status == 404


def check_reload(flow: dict[str, Any], stored: tuple[int, Any]) -> None:
    status, conversation = stored
    assert status == 200
    turn = conversation["turns"][-1]
    assert flow["beforeReload"]
    assert flow["beforeReload"] != turn["assistantText"]
    assert flow["stateAfterReload"] == "running"
    assert flow["toolCalls"] == 1  # the tool call made before the reload shows, once
    assert flow["state"] == "completed"
    assert flow["verified"] == "true"
    assert flow["text"] == turn["assistantText"]


def check_states(flow: dict[str, Any], stored: tuple[int, Any]) -> None:
    # Shift+Enter is a newline, Enter sends; Send is off and Stop on while the turn runs; Esc stops.
    assert flow["draft"] == "slow: line one\nline two"
    assert flow["turnsBeforeEnter"] == flow["turnsAfterShiftEnter"]
    assert flow["userText"] == "slow: line one\nline two"
    assert flow["sendDisabledWhileRunning"]
    assert flow["stopEnabledWhileRunning"]
    assert flow["stopped"]["state"] == "cancelled"
    assert flow["sendEnabledAfter"]
    # A dropped socket: the status said so, and the answer went on to the end.
    assert "reconnecting" in flow["statuses"], flow["statuses"]
    assert flow["statuses"][-1] == "connected", flow["statuses"]
    assert flow["dropped"]["state"] == "completed"
    assert flow["dropped"]["verified"] == "true"
    status, conversation = stored
    assert status == 200
    assert conversation["turns"][-2]["finishReason"] == "FINISH_REASON_CANCELLED"
    assert conversation["turns"][-1]["assistantText"] == flow["dropped"]["text"]


def check_stall(flow: dict[str, Any], stored: tuple[int, Any], quiet: tuple[int, Any]) -> None:
    assert flow["heartbeatMs"] == 1000
    # A quiet stream on a live socket: the same socket, the turn followed to its end on a new stream.
    assert flow["quiet"]["stalled"][0].startswith("stalled"), flow["quiet"]
    assert flow["quiet"]["socketsOpened"] == 0
    assert flow["quiet"]["state"] == "completed"
    assert flow["quiet"]["verified"] == "true"
    assert flow["quiet"]["text"] == quiet[1]["turns"][-1]["assistantText"]
    # A silent socket: dropped, a refused reconnect counted down, then the rest of the answer.
    assert flow["stalledStatus"].startswith("stalled"), flow["stalledStatus"]
    assert flow["countdown"], "a failed reconnect showed a countdown"
    assert flow["state"] == "completed"
    assert flow["verified"] == "true"
    status, conversation = stored
    assert status == 200
    assert flow["text"] == conversation["turns"][-1]["assistantText"]


def check_rate_limit(flow: dict[str, Any]) -> None:
    assert flow["error"].startswith("Rate limited"), flow["error"]
    seconds = [int(n) for n in flow["seconds"]]
    assert seconds[0] >= 1, flow
    assert seconds[1] < seconds[0], flow
    assert flow["sendDisabled"]
    assert flow["draftKept"] == "one more question"
    assert flow["turnState"] == "failed"


def check_jobs(flow: dict[str, Any], listed: dict[str, Any], site: Site) -> None:
    # A start URL the server refuses is said in words; no job is made of it.
    assert flow["refused"].startswith(("That was not accepted: ", "Not allowed: ")), flow["refused"]
    assert "only http and https" in flow["refused"], flow["refused"]
    # A crawl followed live, resumed with WatchJob after a reload, to the end.
    assert flow["stateBeforeReload"] in ("queued", "running")
    assert flow["stateAfterReload"] in ("queued", "running")
    assert flow["finished"].startswith("finished: succeeded, 3 fetched"), flow["finished"]
    assert any(f"{site.url}/slowdocs/a" in line for line in flow["log"]), flow["log"]
    assert flow["counts"].startswith("3 fetched, 0 skipped, 0 failed, 3 ingested"), flow["counts"]
    assert flow["cancelled"] == "cancelled"
    # A GitHub ingestion (a local server speaking GitHub's REST API) from an owner/repo.
    assert flow["github"]["kind"] == "GitHub"
    assert flow["github"]["target"] == "octo-org/hello-world"
    assert flow["github"]["finished"].startswith("finished: succeeded"), flow["github"]
    assert any("README.md" in line for line in flow["github"]["log"]), flow["github"]["log"]
    states = {job["id"]: job["state"] for job in listed["jobs"]}
    assert states[flow["crawlId"]] == "JOB_STATE_SUCCEEDED"
    assert states[flow["cancelId"]] == "JOB_STATE_CANCELLED"
    assert states[flow["github"]["id"]] == "JOB_STATE_SUCCEEDED"
    # An answer citing a crawled page links to the page's URL.
    assert flow["citedUrl"].startswith(f"{site.url}/slowdocs/"), flow["citedUrl"]
    assert flow["citedSummary"].startswith("[1] "), flow["citedSummary"]
