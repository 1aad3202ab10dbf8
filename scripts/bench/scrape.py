"""Crawl throughput vs Scrapy: pages/s, CPU and peak memory crawling a generated local site.

The site (2,000 linked HTML pages of ~4 KB by default: sections of 50 pages, ~10
links each, a robots.txt with a ``Disallow`` that some links hit, a few off-site
links) is served by aiohttp from its own process, so it does not share the
crawler's CPU. Each crawler then runs in a fresh process of its own, at the same
concurrency C (all requests to one host, so per-host concurrency is C too):

* **daveloper**: the app on its embedded defaults (Valkey, Qdrant local mode) on
  uvloop, a ``ScraperService/Scrape`` stream over real gRPC from the same process,
  counting ``page_fetched`` events until ``finished``; ``ingest`` is off unless
  ``--ingest`` (then every page is also parsed, chunked, embedded and stored).
* **scrapy**: a plain ``Spider`` following every same-site link with a
  ``LinkExtractor`` and yielding one item per page (url, status, title), run by
  ``CrawlerProcess`` on Twisted's asyncio reactor, robots.txt obeyed, no delay.

Rounds alternate the order. Wall time runs from the start of the crawl to its end
as the framework reports it (``finished`` received / ``spider_closed``); CPU is
the crawler process over that interval; peak RSS is the process's high-water mark
(imports included). The embedded Valkey is a separate process: its peak RSS and CPU
are reported beside daveloper's.

    .venv/bin/python -m scripts.bench.scrape [--quick] [--pages 2000] [--concurrency 16] [--rounds 3] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

# Only the standard library at the top: each crawler process imports its own framework (in
# crawl_daveloper / crawl_scrapy), so neither's RSS counts the other's modules.
from scripts.bench._stats import median, table

ROOT = Path(__file__).resolve().parents[2]
SECTION = 50  # pages per section; page 0 of a section is its index, and section 0's index is the root
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the site -------------------------------------------------------------------------------------------

def page_path(section: int, index: int) -> str:
    if index == 0:
        return "/" if section == 0 else f"/s{section}/"
    return f"/s{section}/p{index}.html"


def build_site(pages: int, seed: int = 7) -> dict[str, bytes]:
    """Path → body: ``pages`` HTML pages (a multiple of 50) and robots.txt."""
    rng = random.Random(seed)
    words = ["".join(rng.choices("bcdfghklmnprstvz", k=2)) + rng.choice("aeiou") + rng.choice("nrst")
             for _ in range(3000)]
    sections = max(1, pages // SECTION)
    site = {"/robots.txt": b"User-agent: *\nDisallow: /private/\n"}
    for s in range(sections):
        for i in range(SECTION):
            links = [page_path(0, 0), page_path(s, 0), page_path(s, (i - 1) % SECTION),
                     page_path(s, (i + 1) % SECTION)]
            links += [page_path(rng.randrange(sections), rng.randrange(SECTION)) for _ in range(5)]
            if i == 0:  # a section index links to its pages; the root also to every section
                links += [page_path(s, j) for j in range(1, SECTION)]
                if s == 0:
                    links += [page_path(t, 0) for t in range(1, sections)]
            if i % 10 == 3:
                links.append(f"/private/{s}-{i}.html")  # robots.txt disallows it
            if i % 25 == 7:
                links.append(f"http://example.com/{s}/{i}")  # off-site
            title = f"Section {s} page {i}: " + " ".join(rng.choices(words, k=4))
            paragraphs = "".join("<p>" + " ".join(rng.choices(words, k=110)) + ".</p>" for _ in range(6))
            nav = "".join(f'<li><a href="{link}">{" ".join(rng.choices(words, k=2))}</a></li>' for link in links)
            site[page_path(s, i)] = (
                f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title></head><body>"
                f"<header><h1>{title}</h1></header><nav><ul>{nav}</ul></nav><article>{paragraphs}</article>"
                f"<footer>generated page {s * SECTION + i}</footer></body></html>"
            ).encode()
    return site


def serve_site(pages: int) -> None:
    """Serve the site on a free port, print the port, run until killed."""
    import uvloop
    from aiohttp import web

    site = build_site(pages)

    async def handle(request: web.Request) -> web.Response:
        body = site.get(request.path)
        if body is None:
            return web.Response(status=404, text="not found")
        kind = "text/plain" if request.path.endswith(".txt") else "text/html"
        return web.Response(body=body, content_type=kind, charset="utf-8")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        tcp = web.TCPSite(runner, "127.0.0.1", 0)
        await tcp.start()
        print(tcp._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
        await asyncio.Event().wait()

    uvloop.run(main())


@contextmanager
def site_process(pages: int) -> Iterator[tuple[str, int]]:
    """The site in a child process: yields (root URL, pid)."""
    from daveloper.infra.process import die_with_parent

    child = subprocess.Popen([sys.executable, "-m", "scripts.bench.scrape", "--serve-site", "--pages", str(pages)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent())
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"http://127.0.0.1:{port}/", child.pid
    finally:
        child.terminate()
        child.wait(10)


# -- measurements inside a crawler process --------------------------------------------------------------

def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def status_mib(pid: int | str, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Meter:
    """Wall, CPU and RSS of this process over one crawl."""

    def start(self) -> None:
        self.rss_start = status_mib("self", "VmRSS")
        self.cpu, self.wall = cpu_seconds(), time.perf_counter()

    def stop(self, pages: int, **extra: Any) -> dict[str, Any]:
        seconds, cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu
        return {"pages": pages, "seconds": seconds, "pages_per_s": pages / seconds, "cpu_s": cpu,
                "rss_start_mib": self.rss_start,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}


async def crawl_daveloper(root: str, pages: int, concurrency: int, ingest: bool = False) -> dict[str, Any]:
    from grpclib.client import Channel
    from yarl import URL

    from daveloper.app import open_app
    from generated.daveloper.v1 import (
        CreateSessionRequest,
        ScrapeRequest,
        ScraperServiceStub,
        ScrapeSpec,
        SessionServiceStub,
    )
    from scripts.bench._app import bench_settings

    meter = Meter()
    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(Path(tmp), scrape_allow=(f"127.0.0.1:{URL(root).port}",),
                            scrape_concurrency=concurrency, scrape_per_host_concurrency=concurrency,
                            scrape_pages_per_day=10**9, scrape_jobs_per_session=1)
        async with open_app(settings) as app:
            valkey = int((Path(tmp) / "valkey" / "valkey.pid").read_text().split()[0])
            channel = Channel(app.grpc_addr.host, app.grpc_addr.port)
            try:
                token = (await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=10)).token
                spec = ScrapeSpec(urls=[root], max_depth=10, max_pages=pages, same_site_only=True, ingest=ingest)
                fetched = skipped = failed = ingested = 0
                valkey_cpu = process_cpu_seconds(valkey)
                meter.start()
                async for response in ScraperServiceStub(channel).scrape(
                        ScrapeRequest(spec=spec), timeout=600, metadata={"authorization": f"Bearer {token}"}):
                    event = response.event
                    if event.page_fetched is not None:
                        fetched += 1
                        ingested += bool(event.page_fetched.document_id)
                    elif event.page_skipped is not None:
                        skipped += 1
                    elif event.page_failed is not None:
                        failed += 1
                    elif event.finished is not None:
                        break
                return meter.stop(fetched, skipped=skipped, failed=failed, ingested=ingested,
                                  valkey_cpu_s=process_cpu_seconds(valkey) - valkey_cpu,
                                  valkey_peak_rss_mib=status_mib(valkey, "VmHWM"))
            finally:
                channel.close()


def crawl_scrapy(root: str, pages: int, concurrency: int, loop: str) -> dict[str, Any]:
    from scrapy import Request, Spider, signals
    from scrapy.crawler import CrawlerProcess
    from scrapy.http import Response
    from scrapy.linkextractors import LinkExtractor
    from yarl import URL

    host = URL(root).host or ""
    netloc = f"{host}:{URL(root).port}"  # LinkExtractor's allow_domains compares host:port, OffsiteMiddleware host

    class SiteSpider(Spider):
        name = "site"
        allowed_domains = [host]
        links = LinkExtractor(allow_domains=[netloc])

        async def start(self) -> AsyncIterator[Any]:
            # Not ``start_urls``: those requests are ``dont_filter``, so the root would be fetched twice.
            yield Request(root, callback=self.parse)

        def parse(self, response: Response) -> Iterator[Any]:
            yield {"url": response.url, "status": response.status, "title": response.css("title::text").get()}
            for link in self.links.extract_links(response):
                yield response.follow(link.url, callback=self.parse)

    # No CLOSESPIDER_PAGECOUNT: the site has exactly ``pages`` pages, so both crawls end when the frontier is
    # empty (daveloper's max_pages equals it), and the page counter would also count robots.txt.
    settings = {
        "CONCURRENT_REQUESTS": concurrency, "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency, "DOWNLOAD_DELAY": 0,
        "ROBOTSTXT_OBEY": True, "DEPTH_LIMIT": 10, "LOG_LEVEL": "ERROR",
        "TELNETCONSOLE_ENABLED": False,
        "LOG_INSTALL_ROOT_HANDLER": True, "TWISTED_REACTOR": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
    }
    if loop == "uvloop":
        settings["ASYNCIO_EVENT_LOOP"] = "uvloop.Loop"
    meter, result, items = Meter(), {}, 0

    def item_scraped() -> None:
        nonlocal items
        items += 1

    def spider_closed() -> None:
        result.update(meter.stop(items))

    process = CrawlerProcess(settings)
    crawler = process.create_crawler(SiteSpider)
    # Scrapy holds signal receivers by weak reference: these stay alive as locals until the crawl ends.
    crawler.signals.connect(meter.start, signal=signals.spider_opened)
    crawler.signals.connect(item_scraped, signal=signals.item_scraped)
    crawler.signals.connect(spider_closed, signal=signals.spider_closed)
    process.crawl(crawler)
    process.start()
    stats = crawler.stats.get_stats() if crawler.stats else {}
    result["robots_filtered"] = stats.get("robotstxt/forbidden", 0)
    result["offsite_filtered"] = stats.get("offsite/filtered", 0)
    return result


# -- the comparison -------------------------------------------------------------------------------------

def run_crawler(name: str, root: str, pages: int, concurrency: int, site_pid: int, loop: str,
                ingest: bool = False) -> dict[str, Any]:
    from daveloper.infra.process import die_with_parent

    site_cpu = process_cpu_seconds(site_pid)
    done = subprocess.run([sys.executable, "-m", "scripts.bench.scrape", "--crawl", name, "--site", root,
                           "--pages", str(pages), "--concurrency", str(concurrency), "--scrapy-loop", loop,
                           *(["--ingest"] if ingest else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
                          preexec_fn=die_with_parent())
    if done.returncode:
        raise RuntimeError(f"{name} crawler failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["site_cpu_s"] = process_cpu_seconds(site_pid) - site_cpu
    if result["pages"] != pages:
        raise RuntimeError(f"{name} fetched {result['pages']} pages, expected {pages}")
    return result


def compare(pages: int, concurrency: int, rounds: int, loop: str, ingest: bool = False) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"daveloper": [], "scrapy": []}
    with site_process(pages) as (root, site_pid):
        for r in range(rounds):
            for name in ("daveloper", "scrapy") if r % 2 == 0 else ("scrapy", "daveloper"):
                runs[name].append(run_crawler(name, root, pages, concurrency, site_pid, loop, ingest))
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "pages_per_s": median([r["pages_per_s"] for r in results]),
            "pages_per_s_min": min(r["pages_per_s"] for r in results),
            "pages_per_s_max": max(r["pages_per_s"] for r in results),
            "cpu_s_per_1k_pages": median([r["cpu_s"] / r["pages"] * 1000 for r in results]),
            "peak_rss_mib": median([r["peak_rss_mib"] for r in results]),
            "rss_start_mib": median([r["rss_start_mib"] for r in results]),
            "site_cpu_s_per_1k_pages": median([r["site_cpu_s"] / r["pages"] * 1000 for r in results]),
            "runs": results,
        }
    summary["daveloper"]["valkey_cpu_s_per_1k_pages"] = median(
        [r["valkey_cpu_s"] / r["pages"] * 1000 for r in runs["daveloper"]])
    summary["daveloper"]["valkey_peak_rss_mib"] = median([r["valkey_peak_rss_mib"] for r in runs["daveloper"]])
    return {"pages": pages, "concurrency": concurrency, "rounds": rounds, "scrapy_loop": loop, "ingest": ingest,
            **summary}


def report(results: dict[str, Any]) -> str:
    d, s = results["daveloper"], results["scrapy"]

    def row(label: str, key: str, fmt: str, ratio: bool = True) -> list[str]:
        a, b = d.get(key), s.get(key)
        cells = [label, "-" if a is None else format(a, fmt), "-" if b is None else format(b, fmt)]
        return [*cells, f"{a / b:.2f}" if ratio and a is not None and b else "-"]

    rows = [
        [f"pages/s, median (min-max of {results['rounds']})",
         f"{d['pages_per_s']:,.0f} ({d['pages_per_s_min']:,.0f}-{d['pages_per_s_max']:,.0f})",
         f"{s['pages_per_s']:,.0f} ({s['pages_per_s_min']:,.0f}-{s['pages_per_s_max']:,.0f})",
         f"{d['pages_per_s'] / s['pages_per_s']:.2f}"],
        row("crawler CPU s per 1k pages", "cpu_s_per_1k_pages", ".2f"),
        row("Valkey CPU s per 1k pages", "valkey_cpu_s_per_1k_pages", ".2f", ratio=False),
        row("site server CPU s per 1k pages", "site_cpu_s_per_1k_pages", ".2f"),
        row("crawler RSS at crawl start, MiB", "rss_start_mib", ".0f"),
        row("crawler peak RSS, MiB", "peak_rss_mib", ".0f"),
        row("Valkey peak RSS, MiB", "valkey_peak_rss_mib", ".0f", ratio=False),
    ]
    head = (f"{results['pages']} pages, concurrency {results['concurrency']}, {results['rounds']} round(s) in "
            f"alternating order; each crawler in its own process, the site in another"
            + ("; daveloper ingests every page (Scrapy only extracts)" if results.get("ingest") else ""))
    return head + "\n" + table(["", "daveloper", "scrapy", "daveloper/scrapy"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=2000, help="pages on the site (a multiple of 50)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight, both crawlers")
    parser.add_argument("--rounds", type=int, default=3, help="runs per crawler, in alternating order")
    parser.add_argument("--scrapy-loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the asyncio loop under Scrapy's reactor (daveloper always runs on uvloop)")
    parser.add_argument("--ingest", action="store_true", help="daveloper also ingests every page it fetches")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 pages, one round")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    parser.add_argument("--serve-site", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--crawl", choices=("daveloper", "scrapy"), help=argparse.SUPPRESS)
    parser.add_argument("--site", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.pages, args.rounds = 200, 1
    if args.pages % SECTION:
        parser.error(f"--pages must be a multiple of {SECTION}")
    if args.serve_site:
        serve_site(args.pages)
    elif args.crawl == "daveloper":
        import uvloop

        print(json.dumps(uvloop.run(crawl_daveloper(args.site, args.pages, args.concurrency, args.ingest))))
    elif args.crawl == "scrapy":
        print(json.dumps(crawl_scrapy(args.site, args.pages, args.concurrency, args.scrapy_loop)))
    else:
        results = compare(args.pages, args.concurrency, args.rounds, args.scrapy_loop, args.ingest)
        print(json.dumps(results, indent=2) if args.json else report(results))


if __name__ == "__main__":
    main()
