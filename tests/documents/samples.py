"""Real sample documents, generated: PDF (fpdf2, pypdf), DOCX (python-docx), HTML, Markdown, Python.

Each function returns the file's bytes (or text for the text formats), built
the way the format's own tools build it, so the parsers see real files.
"""

from __future__ import annotations

import io
import random
import textwrap
import zipfile

import docx
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

PDF_TITLE = "Release Notes"


def pdf_two_pages() -> bytes:
    """Two pages: an H1 and an H2 section on page 1, another H1 on page 2; metadata title set."""
    pdf = FPDF()
    pdf.set_title(PDF_TITLE)

    def heading(text: str, size: int) -> None:
        pdf.set_font("Helvetica", "B", size)
        pdf.cell(0, size * 0.6, text, new_x="LMARGIN", new_y="NEXT")

    def paragraph(text: str) -> None:
        pdf.set_font("Helvetica", "", 11)
        pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(5)

    pdf.add_page()
    heading("Installation Guide", 20)
    paragraph("Install the package with pip into a fresh virtual environment. " * 6)
    paragraph("Configuration lives in one file that the server reads once at start-up. " * 3)
    heading("Requirements", 15)
    paragraph("Python 3.11 or newer is required, and a Redis server must be reachable.")
    pdf.add_page()
    heading("Usage", 20)
    paragraph("Run the server with the serve command and point the client at its port.")
    return bytes(pdf.output())


def encrypted_pdf(user_password: str = "secret") -> bytes:
    """:func:`pdf_two_pages` encrypted with AES-256; an empty ``user_password`` only restricts permissions."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_two_pages())))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def corrupt_pdf() -> bytes:
    """A PDF header followed by bytes that are no PDF structure at all."""
    return b"%PDF-1.7\n" + random.Random(7).randbytes(3000)


def scanned_pdf() -> bytes:
    """A valid PDF whose only page holds no text (as a scanned page without OCR)."""
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60, style="F")
    return bytes(pdf.output())


def docx_handbook() -> bytes:
    """Title, Heading 1/2 sections, paragraphs, a bullet list and a table; core title set."""
    document = docx.Document()
    document.core_properties.title = "Ops Handbook"
    document.add_heading("Deploying", 1)
    document.add_paragraph("Deploy with the release script from a clean checkout.")
    document.add_paragraph("Build the image", style="List Bullet")
    document.add_paragraph("Push it to the registry", style="List Bullet")
    document.add_heading("Environments", 2)
    document.add_paragraph("Each environment has its own configuration.")
    table = document.add_table(rows=3, cols=2)
    for row, (name, url) in enumerate([("Env", "URL"), ("staging", "https://staging.example"),
                                       ("prod", "https://example")]):
        table.cell(row, 0).text = name
        table.cell(row, 1).text = url
    document.add_heading("Rollback", 1)
    document.add_paragraph("Roll back by redeploying the previous tag.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def docx_zip_bomb(unpacked_bytes: int) -> bytes:
    """A zip that looks like a DOCX and unpacks to ``unpacked_bytes`` of zeros (it compresses ~1000:1)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", b"\0" * unpacked_bytes)
    return out.getvalue()


def plain_zip() -> bytes:
    """A zip archive that is not a Word document."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.txt", "hello")
    return out.getvalue()


def binary_garbage() -> bytes:
    return random.Random(11).randbytes(4096)


NAV_TEXT = "Products Pricing Careers Investor relations"
FOOTER_TEXT = "Copyright 2025 Example Corp. All rights reserved."


def html_article() -> str:
    """An article wrapped in navigation, a sidebar and a footer."""
    paragraph = ("Asyncio lets one thread run many coroutines concurrently, switching between them at await "
                 "points, which suits servers that spend their time waiting on the network.")
    return textwrap.dedent(f"""\
        <!DOCTYPE html>
        <html lang="en">
        <head><meta charset="utf-8"><title>Async Guide | Example</title></head>
        <body>
        <nav><ul><li><a href="/">Home</a></li><li><a href="/p">{NAV_TEXT}</a></li></ul></nav>
        <main><article>
        <h1>Asyncio in practice</h1>
        <p>{paragraph}</p>
        <h2>Task groups</h2>
        <p>A task group owns its tasks: when the block exits, every task has finished or was cancelled,
        and their errors are collected into one exception group that the caller handles.</p>
        <ul><li>Cancellation reaches every child task</li><li>Errors are grouped together</li></ul>
        <h3>Cancellation</h3>
        <p>Cancellation arrives as CancelledError at the next await; never swallow it, re-raise it after cleanup.</p>
        <pre><code>async with asyncio.TaskGroup() as tg:
            tg.create_task(work())</code></pre>
        </article></main>
        <footer><p>{FOOTER_TEXT}</p><p>Privacy policy and terms of service.</p></footer>
        </body>
        </html>
        """)


def markdown_guide() -> str:
    """Front matter, nested headings, a nested list, a fenced code block and a table."""
    return textwrap.dedent("""\
        ---
        title: Front matter title
        ---
        # Daveloper Guide

        Daveloper is a backend for AI developer assistants.
        It speaks gRPC first.

        ## Install

        - Create a virtual environment
          - on Linux use python3 -m venv
        - Install the package

        ```bash
        pip install daveloper
        ```

        ### From source

        Clone the repository and install it in editable mode.

        ## Configure

        | Setting | Default |
        |---------|---------|
        | port    | 50051   |

        # Appendix

        Nothing here yet.
        """)


def python_module() -> str:
    """Imports, a constant, a decorated function, a class and a main guard."""
    return textwrap.dedent('''\
        """A small module."""

        import asyncio
        import functools

        RETRIES = 3


        # Retry a coroutine a few times.
        @functools.cache
        def backoff(attempt: int) -> float:
            """Seconds to wait before an attempt."""
            delay = 0.1 * 2**attempt

            return min(delay, 5.0)


        class Client:
            """Talks to the server."""

            def __init__(self, url: str) -> None:
                self.url = url

            async def fetch(self) -> str:
                await asyncio.sleep(0)
                return self.url


        async def main() -> None:
            print(await Client("x").fetch())


        if __name__ == "__main__":
            asyncio.run(main())
        ''')


def go_source() -> str:
    """Go with a blank line inside a function body."""
    return textwrap.dedent("""\
        package main

        import "fmt"

        // Greet says hello.
        func Greet(name string) string {
        \tgreeting := "hello"

        \treturn greeting + " " + name
        }

        type Server struct {
        \tPort int
        }

        func main() {
        \tfmt.Println(Greet("world"))
        }
        """)


def big_markdown(sections: int = 6, paragraphs: int = 8) -> str:
    """A long document: H1, then ``sections`` H2 sections of ``paragraphs`` paragraphs each, some with an H3."""
    rng = random.Random(3)
    words = ["token", "budget", "chunk", "heading", "section", "retrieval", "vector", "query", "server", "client",
             "stream", "cancel", "deadline", "parser", "document", "paragraph", "sentence", "overlap", "index"]
    lines = ["# Big Manual", ""]
    for section in range(1, sections + 1):
        lines += [f"## Section {section}", ""]
        for number in range(1, paragraphs + 1):
            sentences = [
                " ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + "."
                for _ in range(rng.randint(2, 5))
            ]
            lines += [f"S{section}P{number}: " + " ".join(sentences), ""]
            if number == paragraphs // 2:
                lines += [f"### Detail {section}", ""]
    return "\n".join(lines)


def docbook_manual() -> str:
    """A chapter of a DocBook XSL manual (the Valgrind manual's shape): every heading sits in a
    ``div.titlepage`` of its ``div.sect1``/``div.sect2``, after a ``<a name>`` anchor, below a navigation
    table and a table of contents."""
    def section(level: int, anchor: str, title: str, body: str) -> str:
        return (f'<div class="sect{level - 1}"><div class="titlepage"><div><div><h{level} class="title"'
                f' style="clear: both"><a name="{anchor}"></a>{title}</h{level}></div></div></div>{body}')

    nav = ('<div><table class="nav" width="100%" cellspacing="3" cellpadding="3" border="0" '
           'summary="Navigation header"><tr><td width="22px" align="center" valign="middle">'
           '<a accesskey="p" href="manual-core-adv.html"><img src="images/prev.png" width="18" height="21" '
           'border="0" alt="Prev"></a></td><td width="25px" align="center" valign="middle">'
           '<a accesskey="u" href="manual.html"><img src="images/up.png" width="21" height="18" border="0" '
           'alt="Up"></a></td><th align="center" valign="middle">Valgrind User Manual</th></tr></table></div>')
    toc = ('<div class="toc"><p><b>Table of Contents</b></p><dl class="toc">'
           '<dt><span class="sect1"><a href="mc-manual.html#mc-manual.overview">4.1. Overview</a></span></dt>'
           '<dt><span class="sect1"><a href="mc-manual.html#mc-manual.errormsgs">4.2. Explanation of error '
           'messages from Memcheck</a></span></dt><dd><dl><dt><span class="sect2">'
           '<a href="mc-manual.html#mc-manual.badrw">4.2.1. Illegal read / Illegal write errors</a></span></dt>'
           '<dt><span class="sect2"><a href="mc-manual.html#mc-manual.uninitvals">4.2.2. Use of uninitialised '
           'values</a></span></dt></dl></dd></dl></div>')
    overview = section(2, "mc-manual.overview", "4.1. Overview", (
        "<p>Memcheck is a memory error detector.  It can detect the following problems that are common in C "
        "and C++ programs.</p>"
        '<div class="itemizedlist"><ul class="itemizedlist" style="list-style-type: disc; ">'
        '<li class="listitem"><p>Accessing memory you shouldn\'t, e.g. overrunning and underrunning heap blocks, '
        "overrunning the top of the stack, and accessing memory after it has been freed.</p></li>"
        '<li class="listitem"><p>Using undefined values, i.e. values that have not been initialised, or that '
        "have been derived from other undefined values.</p></li>"
        '<li class="listitem"><p>Memory leaks.</p></li></ul></div>'
        "<p>Problems like these can be difficult to find by other means, often remaining undetected for long "
        "periods, then causing occasional, difficult-to-diagnose crashes.</p></div>"))
    badrw = section(3, "mc-manual.badrw", "4.2.1. Illegal read / Illegal write errors", (
        "<p>For example:</p>"
        '<pre class="programlisting">Invalid read of size 4\n   at 0x40F6BBCC: (within /usr/lib/libpq.so.2.1)\n'
        "   by 0x40F6B804: (within /usr/lib/libpq.so.2.1)\n Address 0xBFFFF0E0 is not stack'd, malloc'd or free'd"
        "</pre>"
        "<p>This happens when your program reads or writes memory at a place which Memcheck reckons it shouldn't. "
        "In this example, the program did a 4-byte read at address 0xBFFFF0E0, somewhere within the system-supplied "
        "library libpq.so.2.1, from a place called from somewhere else in the same library.</p></div>"))
    uninit = section(3, "mc-manual.uninitvals", "4.2.2. Use of uninitialised values", (
        "<p>An uninitialised-value use error is reported when your program uses a value which hasn't been "
        "initialised -- in other words, is undefined. To see information on the sources of uninitialised data "
        'in your program, use the <code class="option">--track-origins=yes</code> option.</p></div>'))
    errors = section(2, "mc-manual.errormsgs", "4.2. Explanation of error messages from Memcheck", (
        "<p>Memcheck issues a range of error messages. This section presents a quick summary of what error "
        "messages mean.</p>" + badrw + uninit + "</div>"))
    chapter = ('<div class="chapter"><div class="titlepage"><div><div><h1 class="title"><a name="mc-manual"></a>'
               "4. Memcheck: a memory error detector</h1></div></div></div>" + toc +
               '<p>To use this tool, you may specify <code class="option">--tool=memcheck</code> on the Valgrind '
               "command line.  You don't have to, though, since Memcheck is the default tool.</p>"
               + overview + errors + "</div>")
    return ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1">'
            "<title>4. Memcheck: a memory error detector</title>"
            '<link rel="stylesheet" href="vg_basic.css" type="text/css">'
            '<meta name="generator" content="DocBook XSL Stylesheets Vsnapshot"></head>'
            '<body bgcolor="white" text="black" link="#0000FF" vlink="#840084" alink="#0000FF">'
            + nav + chapter + nav.replace("header", "footer") + "</body></html>")


def node_api_docs() -> str:
    """A page of the Node.js API docs: every heading ends with a permalink ``#`` anchor (and some with
    a stability badge), below a sidebar of modules and a table of contents."""
    def heading(level: int, anchor: str, title: str) -> str:
        return (f'<h{level}>{title}<span><a class="mark" href="#{anchor}" id="{anchor}">#</a></span>'
                f'<a aria-hidden="true" class="legacy" id="dns_{anchor}"></a></h{level}>')

    sidebar = ('<div id="column2" class="interactive"><ul><li><a href="documentation.html" class="nav-documentation">'
               "About this documentation</a></li><li><a href=\"assert.html\" class=\"nav-assert\">Assertion testing"
               '</a></li><li><a href="buffer.html" class="nav-buffer">Buffer</a></li>'
               '<li><a href="dns.html" class="nav-dns active">DNS</a></li></ul></div>')
    toc = ('<details role="navigation" id="toc" open><summary>Table of contents</summary><ul>'
           '<li><a href="#dns">DNS</a><ul><li><a href="#class-dnsresolver">Class: dns.Resolver</a><ul>'
           '<li><a href="#resolvercancel">resolver.cancel()</a></li></ul></li>'
           '<li><a href="#dnslookuphostname-options-callback">dns.lookup(hostname[, options], callback)</a></li>'
           "</ul></li></ul></details>")
    body = (
        heading(1, "dns", "DNS")
        + '<p><strong>Stability: 2</strong> - Stable</p>'
        + "<p>The <code>node:dns</code> module enables name resolution. For example, use it to look up IP "
          "addresses of host names.</p>"
        + "<p>Although named for the Domain Name System (DNS), it does not always use the DNS protocol for "
          "lookups. <code>dns.lookup()</code> uses the operating system facilities to perform name resolution.</p>"
        + '<pre><code class="language-js">const dns = require(\'node:dns\');\n\n'
          "dns.lookup('example.org', (err, address, family) =&gt; {\n"
          "  console.log('address: %j family: IPv%s', address, family);\n});</code></pre>"
        + heading(2, "class-dnsresolver", "Class: <code>dns.Resolver</code>")
        + "<p>An independent resolver for DNS requests. Creating a new resolver uses the default server "
          "settings. Setting the servers used for a resolver using <code>resolver.setServers()</code> does not "
          "affect other resolvers.</p>"
        + heading(3, "resolvercancel", "<code>resolver.cancel()</code>")
        + "<p>Cancel all outstanding DNS queries made by this resolver. The corresponding callbacks will be "
          "called with an error with code <code>ECANCELLED</code>.</p>"
        + heading(2, "dnslookuphostname-options-callback",
                  "<code>dns.lookup(hostname[, options], callback)</code>")
        + "<p>Resolves a host name (e.g. <code>'nodejs.org'</code>) into the first found A (IPv4) or AAAA (IPv6) "
          "record. All <code>option</code> properties are optional. If <code>options</code> is an integer, then "
          "it must be <code>4</code> or <code>6</code>.</p>"
    )
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>DNS | Node.js v20.11.0 '
            'Documentation</title></head><body class="alt apidoc" id="api-section-dns"><div id="content" '
            'class="clearfix">' + sidebar + '<div id="column1" data-id="dns" class="interactive"><div id="header">'
            '<h1>Node.js v20.11.0 documentation</h1></div><hr>' + toc + '<div id="apicontent">' + body
            + "</div></div></div></body></html>")
