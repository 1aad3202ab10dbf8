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
