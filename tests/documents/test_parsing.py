"""parse(): real files of every format to blocks; sniffing; refusals with stable reasons."""

from __future__ import annotations

import codecs
import random

import pytest

from daveloper.documents.chunking import chunk
from daveloper.documents.model import Block, BlockKind, ParsedDocument
from daveloper.documents.parsing import ParseLimits, Reason, parse
from daveloper.errors import InvalidArgument
from tests.documents import samples

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def outline(doc: ParsedDocument) -> list[tuple[str, int, tuple[str, ...]]]:
    """(text, level, heading path) of each heading."""
    return [(b.text, b.level, b.heading_path) for b in doc.blocks if b.kind is BlockKind.HEADING]


def refusal(data: bytes, **kwargs: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        parse(data, **kwargs)  # type: ignore[arg-type]
    return caught.value


def assert_source_lines(doc: ParsedDocument, source: str) -> None:
    """Every block's text is exactly the source lines its range names."""
    lines = source.split("\n")
    for block in doc.blocks:
        if block.kind is not BlockKind.HEADING:
            assert block.text == "\n".join(lines[block.start_line - 1 : block.end_line]), block


# --- PDF ------------------------------------------------------------------------------------------------------------


def test_pdf_has_pages_headings_and_metadata_title() -> None:
    doc = parse(samples.pdf_two_pages(), file_name="notes.pdf")

    assert doc.media_type == "application/pdf"
    assert doc.title == samples.PDF_TITLE
    assert outline(doc) == [
        ("Installation Guide", 1, ()),
        ("Requirements", 2, ("Installation Guide",)),
        ("Usage", 1, ()),
    ]
    paragraphs = [b for b in doc.blocks if b.kind is BlockKind.PARAGRAPH]
    assert [(b.page, b.heading_path, b.text.split()[0]) for b in paragraphs] == [
        (1, ("Installation Guide",), "Install"),
        (1, ("Installation Guide",), "Configuration"),
        (1, ("Installation Guide", "Requirements"), "Python"),
        (2, ("Usage",), "Run"),
    ]
    assert paragraphs[0].text.count("Install the package with pip") == 6  # wrapped lines rejoined, one paragraph


def test_content_beats_the_name_and_the_declared_type() -> None:
    doc = parse(samples.pdf_two_pages(), file_name="notes.txt", declared_type="text/plain")
    assert doc.media_type == "application/pdf"
    assert doc.blocks[0].text == "Installation Guide"

    doc = parse(samples.docx_handbook(), file_name="handbook.md", declared_type="text/markdown")
    assert doc.media_type == DOCX

    doc = parse(samples.html_article().encode(), file_name="page.txt", declared_type="application/pdf")
    assert doc.media_type == "text/html"

    doc = parse(samples.markdown_guide().encode(), file_name="guide.pdf", declared_type="application/pdf")
    assert doc.media_type == "text/markdown"


def test_pdf_encrypted_only_against_changes_opens() -> None:
    doc = parse(samples.encrypted_pdf(user_password=""))
    assert doc.title == samples.PDF_TITLE
    assert [b.text for b in doc.blocks][:1] == ["Installation Guide"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (samples.encrypted_pdf(), Reason.ENCRYPTED_DOCUMENT),
        (samples.corrupt_pdf(), Reason.CORRUPT_DOCUMENT),
        (samples.scanned_pdf(), Reason.NO_TEXT),
    ],
    ids=["encrypted", "corrupt", "no-text"],
)
def test_pdf_refusals(data: bytes, reason: Reason) -> None:
    error = refusal(data, file_name="report.pdf")
    assert error.reason == reason
    assert [field for field, _ in error.violations] == ["chunk"]
    assert error.message.startswith("chunk: ")


def test_library_errors_are_translated_with_their_cause() -> None:
    error = refusal(samples.corrupt_pdf())
    assert error.__cause__ is not None
    assert not isinstance(error.__cause__, InvalidArgument)


def test_pdf_with_more_pages_than_allowed_is_refused() -> None:
    error = refusal(samples.pdf_two_pages(), limits=ParseLimits(max_pages=1))
    assert error.reason == Reason.DOCUMENT_TOO_LARGE
    assert "2 pages" in error.message


# --- DOCX -----------------------------------------------------------------------------------------------------------


def test_docx_headings_paragraphs_lists_and_tables() -> None:
    doc = parse(samples.docx_handbook(), file_name="handbook.docx")

    assert doc.media_type == DOCX
    assert doc.title == "Ops Handbook"
    assert [(b.kind, b.heading_path, b.text) for b in doc.blocks if b.kind is not BlockKind.HEADING] == [
        (BlockKind.PARAGRAPH, ("Deploying",), "Deploy with the release script from a clean checkout."),
        (BlockKind.LIST, ("Deploying",), "- Build the image\n- Push it to the registry"),
        (BlockKind.PARAGRAPH, ("Deploying", "Environments"), "Each environment has its own configuration."),
        (BlockKind.TABLE, ("Deploying", "Environments"),
         "Env | URL\nstaging | https://staging.example\nprod | https://example"),
        (BlockKind.PARAGRAPH, ("Rollback",), "Roll back by redeploying the previous tag."),
    ]
    assert outline(doc) == [("Deploying", 1, ()), ("Environments", 2, ("Deploying",)), ("Rollback", 1, ())]


def test_docx_zip_bomb_is_refused_before_unpacking() -> None:
    bomb = samples.docx_zip_bomb(8_000_000)
    assert len(bomb) < 100_000
    error = refusal(bomb, file_name="x.docx", limits=ParseLimits(max_unpacked_bytes=1_000_000))
    assert error.reason == Reason.DOCUMENT_TOO_LARGE


def test_a_zip_that_is_not_a_word_document_is_refused() -> None:
    error = refusal(samples.plain_zip(), file_name="notes.docx", declared_type=DOCX)
    assert error.reason == Reason.UNSUPPORTED_MEDIA_TYPE
    assert error.violations[0][0] == "header.media_type"


def test_damaged_docx_is_corrupt() -> None:
    error = refusal(samples.docx_zip_bomb(1000), file_name="x.docx")  # word/document.xml holds NULs, not XML
    assert error.reason == Reason.CORRUPT_DOCUMENT


# --- HTML -----------------------------------------------------------------------------------------------------------


def test_html_main_content_without_boilerplate() -> None:
    doc = parse(samples.html_article().encode(), file_name="guide.html")

    assert doc.media_type == "text/html"
    assert doc.title == "Async Guide | Example"
    assert outline(doc) == [
        ("Asyncio in practice", 1, ()),
        ("Task groups", 2, ("Asyncio in practice",)),
        ("Cancellation", 3, ("Asyncio in practice", "Task groups")),
    ]
    text = "\n".join(b.text for b in doc.blocks)
    assert samples.NAV_TEXT not in text
    assert samples.FOOTER_TEXT not in text
    assert "Home" not in text
    by_kind = {b.kind: b for b in doc.blocks}
    assert by_kind[BlockKind.LIST].text == "- Cancellation reaches every child task\n- Errors are grouped together"
    assert by_kind[BlockKind.CODE].text.startswith("async with asyncio.TaskGroup() as tg:")
    assert by_kind[BlockKind.CODE].heading_path == ("Asyncio in practice", "Task groups", "Cancellation")


def test_html_is_sniffed_without_a_name() -> None:
    assert parse(samples.html_article().encode()).media_type == "text/html"


def test_html_with_no_content_has_no_text() -> None:
    error = refusal(b"<!DOCTYPE html><html><head><title>x</title></head><body></body></html>")
    assert error.reason == Reason.NO_TEXT


# --- Markdown and plain text ----------------------------------------------------------------------------------------


def test_markdown_blocks_heading_paths_and_exact_line_ranges() -> None:
    source = samples.markdown_guide()
    doc = parse(source.encode(), file_name="guide.md")

    assert doc.media_type == "text/markdown"
    assert doc.title == "Daveloper Guide"
    assert outline(doc) == [
        ("Daveloper Guide", 1, ()),
        ("Install", 2, ("Daveloper Guide",)),
        ("From source", 3, ("Daveloper Guide", "Install")),
        ("Configure", 2, ("Daveloper Guide",)),
        ("Appendix", 1, ()),
    ]
    lines = source.split("\n")
    content = [b for b in doc.blocks if b.kind is not BlockKind.HEADING]
    assert [(b.kind, b.start_line, b.end_line, b.heading_path) for b in content] == [
        (BlockKind.PARAGRAPH, 6, 7, ("Daveloper Guide",)),
        (BlockKind.LIST, 11, 13, ("Daveloper Guide", "Install")),
        (BlockKind.CODE, 15, 17, ("Daveloper Guide", "Install")),
        (BlockKind.PARAGRAPH, 21, 21, ("Daveloper Guide", "Install", "From source")),
        (BlockKind.TABLE, 25, 27, ("Daveloper Guide", "Configure")),
        (BlockKind.PARAGRAPH, 31, 31, ("Appendix",)),
    ]
    assert lines[10] == "- Create a virtual environment"
    assert lines[16] == "```"
    assert_source_lines(doc, source)
    headings = {b.text: (b.start_line, b.end_line) for b in doc.blocks if b.kind is BlockKind.HEADING}
    assert lines[headings["From source"][0] - 1] == "### From source"
    assert "title:" not in "\n".join(b.text for b in doc.blocks)  # the front matter is not content


def test_markdown_without_h1_takes_the_front_matter_title_then_the_file_name() -> None:
    assert parse(b"---\ntitle: 'Notes'\n---\nSome *text*.\n", file_name="n.md").title == "Notes"
    assert parse(b"## Only a section\n\ntext\n", file_name="dir/notes.md").title == "notes.md"


def test_markdown_is_recognised_by_its_syntax_without_a_name() -> None:
    source = "Intro line\n\n## Usage\n\nRun it:\n\n```\nmake\n```\n"
    doc = parse(source.encode(), declared_type="application/octet-stream")
    assert doc.media_type == "text/markdown"
    assert outline(doc) == [("Usage", 2, ())]


def test_plain_text_paragraphs_with_line_ranges() -> None:
    source = "First paragraph\nstill first.\n\n\nSecond one.\n"
    doc = parse(source.encode(), file_name="notes.txt")
    assert doc.media_type == "text/plain"
    assert [(b.start_line, b.end_line, b.text) for b in doc.blocks] == [
        (1, 2, "First paragraph\nstill first."),
        (5, 5, "Second one."),
    ]


@pytest.mark.parametrize(
    "data",
    [
        codecs.BOM_UTF8 + "Café crème\n".encode(),
        "Café crème\n".encode("utf-16"),
        "Café crème, naïve façade, déjà vu — les élèves étudient à l'école.\n".encode("cp1252"),
    ],
    ids=["utf-8-bom", "utf-16", "cp1252"],
)
def test_text_is_decoded_from_its_encoding(data: bytes) -> None:
    doc = parse(data, file_name="notes.txt")
    assert doc.blocks[0].text.startswith("Café crème")


def test_declared_charset_is_used_when_the_text_is_not_utf8() -> None:
    doc = parse("Grüße aus Köln".encode("latin-1"), declared_type="text/plain; charset=ISO-8859-1")
    assert doc.blocks[0].text == "Grüße aus Köln"


# --- Source code ----------------------------------------------------------------------------------------------------


def test_python_is_cut_into_definitions_and_methods_with_exact_lines_and_paths() -> None:
    source = samples.python_module()
    doc = parse(source.encode(), file_name="client.py")

    assert (doc.media_type, doc.language, doc.title) == ("text/x-python", "python", "client.py")
    assert all(b.kind is BlockKind.CODE for b in doc.blocks)
    assert [b.heading_path for b in doc.blocks] == [
        (), ("def backoff",), ("class Client",), ("class Client", "def __init__"),
        ("class Client", "async def fetch"), ("async def main",), ()]
    assert_source_lines(doc, source)
    lines = source.split("\n")

    def line_of(prefix: str) -> int:
        return next(n for n, line in enumerate(lines, 1) if line.startswith(prefix))

    assert [(b.start_line, b.end_line) for b in doc.blocks] == [
        (1, line_of("RETRIES")),
        (line_of("# Retry"), line_of("    return min")),  # the comment and decorator go with the function
        (line_of("class Client"), line_of('    """Talks')),  # the class line and its docstring
        (line_of("    def __init__"), line_of("        self.url = url")),
        (line_of("    async def fetch"), line_of("        return self.url")),
        (line_of("async def main"), line_of("    print(")),
        (line_of("if __name__"), line_of("    asyncio.run")),
    ]
    covered = [n for b in doc.blocks for n in range(b.start_line, b.end_line + 1)]
    assert len(covered) == len(set(covered))
    assert {n for n, line in enumerate(lines, 1) if line.strip()} <= set(covered)


def test_other_languages_are_cut_at_unindented_lines_after_blank_lines() -> None:
    source = samples.go_source()
    doc = parse(source.encode(), file_name="main.go")
    assert doc.language == "go"
    assert [b.text.split("\n")[0] for b in doc.blocks] == [
        "package main", "// Greet says hello.", "type Server struct {", "func main() {",
    ]
    assert (doc.blocks[1].start_line, doc.blocks[1].end_line) == (5, 10)  # the blank line inside stays inside
    assert_source_lines(doc, source)


def test_python_that_does_not_parse_still_gets_units() -> None:
    source = "def broken(:\n    pass\n\n\ndef fine():\n    return 1\n"
    doc = parse(source.encode(), file_name="x.py")
    assert [(b.start_line, b.end_line) for b in doc.blocks] == [(1, 2), (5, 6)]


@pytest.mark.parametrize(
    ("file_name", "declared_type", "content", "language"),
    [
        ("app.ts", "", "export const x = 1;\n", "typescript"),
        ("lib.rs", "", "fn main() {}\n", "rust"),
        ("Main.java", "", "class Main {}\n", "java"),
        ("deploy.yaml", "", "a: 1\n", "yaml"),
        ("pyproject.toml", "", "[project]\nname = 'x'\n", "toml"),
        ("query.sql", "", "SELECT 1;\n", "sql"),
        ("Dockerfile", "", "FROM python:3.11\n", "dockerfile"),
        ("src/x.cpp", "text/plain", "int main() {}\n", "cpp"),
        ("", "text/x-python", "x = 1\n", "python"),
        ("", "", "#!/usr/bin/env bash\necho hi\n", "shell"),
        ("", "", "#!/usr/bin/python3\nprint(1)\n", "python"),
        ("", "", '{"name": "daveloper", "tags": ["a", "b"]}\n', "json"),
    ],
)
def test_language_from_extension_declared_type_or_content(
    file_name: str, declared_type: str, content: str, language: str
) -> None:
    doc = parse(content.encode(), file_name=file_name, declared_type=declared_type)
    assert doc.language == language
    assert doc.blocks[0].kind is BlockKind.CODE


# --- Refusals -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"  \n\t\n", codecs.BOM_UTF8 + b"\n"], ids=["empty", "whitespace", "bom"])
def test_empty_documents_are_refused(data: bytes) -> None:
    error = refusal(data, file_name="empty.md")
    assert error.reason == Reason.EMPTY_DOCUMENT
    assert error.violations == [("chunk", "the document is empty")]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (samples.binary_garbage(), "binary"),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "PNG"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "legacy Office"),
    ],
    ids=["garbage", "png", "legacy-doc"],
)
def test_binary_content_is_an_unsupported_media_type(data: bytes, says: str) -> None:
    error = refusal(data, file_name="notes.txt", declared_type="text/plain")
    assert error.reason == Reason.UNSUPPORTED_MEDIA_TYPE
    assert error.violations[0][0] == "header.media_type"
    assert says in error.message


def test_encrypted_office_container_is_recognised() -> None:
    data = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100) + "EncryptedPackage".encode("utf-16-le") + bytes(100)
    assert refusal(data, file_name="secret.docx").reason == Reason.ENCRYPTED_DOCUMENT


def test_blocks_are_frozen_values() -> None:
    doc = parse(b"# T\n\ntext\n", file_name="a.md")
    assert doc.blocks == (
        Block(BlockKind.HEADING, "T", start_line=1, end_line=1, level=1),
        Block(BlockKind.PARAGRAPH, "text", heading_path=("T",), start_line=3, end_line=3),
    )


@pytest.mark.parametrize("name", ["pdf", "docx"])
def test_damaged_files_never_leak_a_library_exception(name: str) -> None:
    """Random byte flips, truncations and splices: a document or an InvalidArgument, nothing else."""
    base = samples.pdf_two_pages() if name == "pdf" else samples.docx_handbook()
    rng = random.Random(name)
    reasons: list[str] = []
    for _ in range(60):
        data = bytearray(base)
        cut = rng.randrange(len(data))
        match rng.randrange(3):
            case 0:
                for _ in range(rng.randint(1, 20)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            case 1:
                del data[cut:]
            case _:
                data[cut : cut + rng.randint(1, 300)] = rng.randbytes(rng.randint(1, 300))
        reasons.append(outcome(bytes(data), f"x.{name}"))
    assert set(reasons) <= {"parsed", *Reason}
    assert Reason.CORRUPT_DOCUMENT in reasons


def outcome(data: bytes, file_name: str) -> str:
    """"parsed", or the reason of the InvalidArgument (any other exception fails the test)."""
    try:
        parse(data, file_name=file_name)
    except InvalidArgument as error:
        return error.reason
    return "parsed"


def test_text_that_mentions_the_pdf_magic_stays_text() -> None:
    doc = parse(b"# PDF notes\n\nA PDF file starts with %PDF-1.7 and ends with a trailer.\n")
    assert doc.media_type == "text/markdown"
    assert parse(b"garbage before\n" + samples.pdf_two_pages()).media_type == "application/pdf"


def test_docbook_headings_become_heading_paths() -> None:
    doc = parse(samples.docbook_manual().encode(), file_name="mc-manual.html")
    headings = [b.text for b in doc.blocks if b.kind is BlockKind.HEADING]
    assert headings == ["4. Memcheck: a memory error detector", "4.1. Overview",
                        "4.2. Explanation of error messages from Memcheck",
                        "4.2.1. Illegal read / Illegal write errors", "4.2.2. Use of uninitialised values"]
    content = [b for b in doc.blocks if b.kind is not BlockKind.HEADING]
    assert all(b.heading_path for b in content)
    uninit = next(b for b in content if "uninitialised-value use error" in b.text)
    assert uninit.heading_path[-2:] == ("4.2. Explanation of error messages from Memcheck",
                                        "4.2.2. Use of uninitialised values")
    code = next(b for b in content if b.kind is BlockKind.CODE)
    assert code.text.startswith("Invalid read of size 4\n   at 0x40F6BBCC")
    texts = " ".join(b.text for b in doc.blocks)
    assert "Table of Contents" not in texts
    assert "Prev" not in texts
    chunks = chunk(doc)
    assert all(c.heading_path for c in chunks)


def test_permalink_anchors_are_not_part_of_headings() -> None:
    doc = parse(samples.node_api_docs().encode(), file_name="dns.html")
    headings = [b.text for b in doc.blocks if b.kind is BlockKind.HEADING]
    assert {"DNS", "Class: dns.Resolver", "resolver.cancel()", "dns.lookup(hostname[, options], callback)"} <= set(
        headings)
    assert not any(h.endswith("#") for h in headings)
    cancel = next(b for b in doc.blocks if b.text.startswith("Cancel all outstanding"))
    assert cancel.heading_path[-2:] == ("Class: dns.Resolver", "resolver.cancel()")
    assert all("#" not in part for b in doc.blocks for part in b.heading_path)


def test_headings_of_navigation_and_sidebars_do_not_make_the_page_read_whole() -> None:
    related = "".join(f"<h3>Related story {i}</h3><p><a href='/s/{i}'>Read more</a></p>" for i in range(8))
    page = samples.html_article().replace("</main>", f"</main><aside class='sidebar'>{related}</aside>")
    doc = parse(page.encode(), file_name="guide.html")
    texts = " ".join(b.text for b in doc.blocks)
    assert "Related story" not in texts
    assert samples.NAV_TEXT not in texts
    assert [b.text for b in doc.blocks if b.kind is BlockKind.HEADING] == [
        "Asyncio in practice", "Task groups", "Cancellation"]
