"""A generated website for crawl tests: hundreds of linked pages and every awkward case a crawler meets.

Layout (``sections`` times ``pages`` pages)::

    /                       links to every section, an off-site URL, a mailto: link
    /section/<s>            links to its pages and to /private/<s>
    /page/<s>/<p>           links to the next page, its section, /private/<s>, and a few special pages
    /private/<n>            disallowed by robots.txt
    /redirect/1 -> 2 -> 3 -> /page/0/0
    /loop                   redirects to itself
    /slow                   answers after ``slow_seconds``
    /error                  HTTP 500
    /latin1                 ISO-8859-1 text declared in the Content-Type header
    /cp1251                 windows-1251 text declared only in a <meta> tag
    /orphan                 linked from nowhere, listed in /sitemap.xml
    /flaky                  429 with Retry-After: 1 on the first request, then the page
    /huge                   larger than any test's page limit
    /to-loopback            redirects to ``localhost`` (a loopback name the tests do not allow)
    /pdf                    a PDF document
    /go?to=URL              redirects to URL (hostile redirect targets)
    /links?to=URL&to=URL    a page linking to each URL (hostile link targets)

Every page carries an ETag and answers 304 to a matching If-None-Match.
Requests are recorded (path and monotonic time) for the tests to inspect.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from tests.documents.samples import pdf_two_pages

SECRET_WORD = "quokkasaurus"


@dataclass
class Site:
    sections: int = 10
    pages: int = 30
    slow_seconds: float = 3.0
    #: Delay added to every page answer (to make a crawl take a while).
    page_delay: float = 0.0
    port: int = 0
    requests: list[tuple[str, float]] = field(default_factory=list)
    #: The fact ``/changing`` states (a test edits it to make the page change).
    changing_fact: str = "The flux capacitor needs 1.21 gigawatts."
    _flaky_seen: bool = False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    # -- content -------------------------------------------------------------------------

    def _html(self, title: str, body: str, *, charset: str = "utf-8", meta: str = "") -> bytes:
        return (f"<!doctype html><html><head>{meta}<title>{title}</title></head><body>"
                f"<nav><a href='/'>Home</a></nav><main><h1>{title}</h1>{body}</main>"
                f"<footer>generated test site</footer></body></html>").encode(charset)

    def page_html(self, s: int, p: int) -> bytes:
        nxt = f"<a href='/page/{s}/{p + 1}'>next</a>" if p + 1 < self.pages else ""
        word = f" The {SECRET_WORD} lives on this page only." if (s, p) == (1, 3) else ""
        body = (f"<p>Page {p} of section {s} explains topic {s}-{p} in detail.{word}</p>"
                f"<p>Each page has a paragraph of text so that extraction finds the main content, "
                f"and a few links so that the crawler finds the next page.</p>"
                f"{nxt} <a href='/section/{s}'>up</a> <a href='/private/{s}'>private</a> "
                f"<a href='/page/{s}/{p}#fragment'>self</a> <a href='https://off.site.example/x'>elsewhere</a>")
        return self._html(f"Page {s}-{p}", body)

    # -- server --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/", self._index)
        app.router.add_get("/robots.txt", self._robots)
        app.router.add_get("/sitemap.xml", self._sitemap)
        app.router.add_get("/section/{s}", self._section)
        app.router.add_get("/page/{s}/{p}", self._page)
        app.router.add_get("/private/{n}", self._private)
        app.router.add_get("/redirect/{n}", self._redirect)
        app.router.add_get("/loop", self._loop)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/error", self._error)
        app.router.add_get("/latin1", self._latin1)
        app.router.add_get("/cp1251", self._cp1251)
        app.router.add_get("/orphan", self._orphan)
        app.router.add_get("/flaky", self._flaky)
        app.router.add_get("/huge", self._huge)
        app.router.add_get("/to-loopback", self._to_loopback)
        app.router.add_get("/pdf", self._pdf)
        app.router.add_get("/go", self._go)
        app.router.add_get("/links", self._links)
        app.router.add_get("/changing", self._changing)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        self.requests.append((request.path, time.monotonic()))
        if self.page_delay and request.path.startswith(("/page", "/section")):
            await asyncio.sleep(self.page_delay)
        response = await handler(request)
        if isinstance(response, web.Response) and response.status == 200 and response.body is not None:
            assert isinstance(response.body, bytes)
            etag = '"' + hashlib.sha1(response.body).hexdigest()[:16] + '"'
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers={"ETag": etag})
            response.headers["ETag"] = etag
        return response

    def _reply(self, body: bytes, content_type: str = "text/html; charset=utf-8") -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _index(self, request: web.Request) -> web.Response:
        links = "".join(f"<li><a href='/section/{s}'>Section {s}</a></li>" for s in range(self.sections))
        extra = ("<a href='/redirect/1'>redirects</a> <a href='/slow'>slow</a> <a href='/error'>error</a> "
                 "<a href='/latin1'>latin1</a> <a href='/cp1251'>cp1251</a> <a href='/loop'>loop</a> "
                 "<a href='mailto:someone@example.com'>mail</a> <a href='https://off.site.example/'>off</a>")
        return self._reply(self._html("Test site", f"<ul>{links}</ul><p>{extra}</p>"))

    async def _changing(self, request: web.Request) -> web.Response:
        body = f"<p>Release notes of the time machine. {self.changing_fact}</p><p>Read them before travelling.</p>"
        return self._reply(self._html("Release notes", body))

    async def _robots(self, request: web.Request) -> web.Response:
        return web.Response(text=f"User-agent: *\nDisallow: /private/\n\nSitemap: {self.base}/sitemap.xml\n")

    async def _sitemap(self, request: web.Request) -> web.Response:
        urls = "".join(f"<url><loc>{self.base}{p}</loc></url>" for p in ("/", "/orphan", "/page/0/0"))
        return web.Response(
            text=f'<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                 f"{urls}</urlset>",
            content_type="application/xml")

    async def _section(self, request: web.Request) -> web.Response:
        s = int(request.match_info["s"])
        links = "".join(f"<li><a href='/page/{s}/{p}'>Page {p}</a></li>" for p in range(self.pages))
        body = f"<p>Section {s} of the test site.</p><ul>{links}</ul><a href='/private/{s}'>private</a>"
        return self._reply(self._html(f"Section {s}", body))

    async def _page(self, request: web.Request) -> web.Response:
        s, p = int(request.match_info["s"]), int(request.match_info["p"])
        if s >= self.sections or p >= self.pages:
            raise web.HTTPNotFound()
        return self._reply(self.page_html(s, p))

    async def _private(self, request: web.Request) -> web.Response:
        return self._reply(self._html("Private", "<p>robots.txt disallows this page.</p>"))

    async def _redirect(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        raise web.HTTPFound(f"/redirect/{n + 1}" if n < 3 else "/page/0/0")

    async def _loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.slow_seconds)
        return self._reply(self._html("Slow", "<p>finally</p>"))

    async def _error(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="internal error")

    async def _latin1(self, request: web.Request) -> web.Response:
        body = self._html("Café crème", "<p>Un café crème à la française, s'il vous plaît.</p>", charset="iso-8859-1")
        return self._reply(body, "text/html; charset=ISO-8859-1")

    async def _cp1251(self, request: web.Request) -> web.Response:
        meta = "<meta charset='windows-1251'>"
        body = self._html("Привет, мир", "<p>Страница в кодировке windows-1251 для проверки.</p>",
                          charset="windows-1251", meta=meta)
        return self._reply(body, "text/html")

    async def _orphan(self, request: web.Request) -> web.Response:
        return self._reply(self._html("Orphan", "<p>Only the sitemap knows about this page.</p>"))

    async def _flaky(self, request: web.Request) -> web.Response:
        if not self._flaky_seen:
            self._flaky_seen = True
            return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        return self._reply(self._html("Flaky", "<p>second time lucky</p>"))

    async def _huge(self, request: web.Request) -> web.Response:
        return self._reply(b"<html><body>" + b"x" * (2 * 1024 * 1024) + b"</body></html>")

    async def _to_loopback(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{self.port}/page/0/0")

    async def _pdf(self, request: web.Request) -> web.Response:
        return self._reply(pdf_two_pages(), "application/pdf")

    async def _go(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def _links(self, request: web.Request) -> web.Response:
        links = "".join(f"<li><a href='{html.escape(to)}'>{html.escape(to)}</a></li>"
                        for to in request.query.getall("to"))
        return self._reply(self._html("Links", f"<ul>{links}</ul>"))


@asynccontextmanager
async def serve_site(site: Site) -> AsyncIterator[Site]:
    runner = web.AppRunner(site.app(), access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    site.port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield site
    finally:
        await runner.cleanup()
