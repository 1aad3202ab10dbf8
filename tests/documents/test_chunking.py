"""chunk() and count_tokens(): budgets, structure, overlap and exact line ranges, on parsed real files."""

from __future__ import annotations

import itertools
import re
import textwrap

import pytest

from daveloper.documents.chunking import PATH_SEPARATOR, chunk
from daveloper.documents.model import Block, BlockKind, ChunkDraft, ParsedDocument
from daveloper.documents.parsing import parse
from daveloper.documents.tokens import count_tokens
from tests.documents import samples


def body(draft: ChunkDraft) -> str:
    """The chunk's text without its heading-path prefix (the full path, or its last heading when that is long)."""
    path = draft.heading_path
    for prefix in (PATH_SEPARATOR.join(path), path[-1] if path else ""):
        if prefix and draft.text.startswith(prefix + "\n\n"):
            return draft.text[len(prefix) + 2 :]
    return draft.text


def test_the_heading_path_prefixes_the_text() -> None:
    drafts = chunk(parse(samples.markdown_guide().encode(), file_name="guide.md"))
    assert drafts[1].text.startswith("Daveloper Guide > Install\n\n")
    assert drafts[1].heading_path == ("Daveloper Guide", "Install")


def assert_well_formed(drafts: list[ChunkDraft], max_tokens: int) -> None:
    assert [d.index for d in drafts] == list(range(len(drafts)))
    for draft in drafts:
        assert draft.token_count == count_tokens(draft.text)
        assert draft.token_count <= max_tokens, draft
        assert body(draft).strip()


DOCUMENTS = {
    "markdown": lambda: parse(samples.big_markdown().encode(), file_name="manual.md"),
    "pdf": lambda: parse(samples.pdf_two_pages()),
    "docx": lambda: parse(samples.docx_handbook()),
    "html": lambda: parse(samples.html_article().encode()),
    "python": lambda: parse(samples.python_module().encode(), file_name="client.py"),
}


@pytest.mark.parametrize("name", DOCUMENTS)
@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(350, 40), (80, 20), (24, 6)])
def test_every_chunk_fits_the_budget(name: str, max_tokens: int, overlap_tokens: int) -> None:
    doc = DOCUMENTS[name]()
    drafts = chunk(doc, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    assert_well_formed(drafts, max_tokens)
    assert chunk(doc, max_tokens=max_tokens, overlap_tokens=overlap_tokens) == drafts  # deterministic


@pytest.mark.parametrize("name", DOCUMENTS)
def test_block_counts_given_by_the_caller_give_the_same_chunks(name: str) -> None:
    doc = DOCUMENTS[name]()
    counts = [count_tokens(block.text) for block in doc.blocks]
    assert chunk(doc, max_tokens=80, overlap_tokens=20, block_tokens=counts) == chunk(doc, max_tokens=80,
                                                                                      overlap_tokens=20)
    with pytest.raises(ValueError, match="block token counts"):
        chunk(doc, block_tokens=counts[:-1])


def test_big_markdown_keeps_heading_paths_and_never_mixes_sections() -> None:
    doc = parse(samples.big_markdown(sections=6, paragraphs=8).encode(), file_name="manual.md")
    drafts = chunk(doc, max_tokens=120, overlap_tokens=20)
    assert_well_formed(drafts, 120)
    assert len(drafts) > 12

    seen: set[str] = set()
    for draft in drafts:
        markers = re.findall(r"S(\d)P(\d)", draft.text)
        seen.update(f"S{s}P{p}" for s, p in markers)
        sections = {s for s, _ in markers}
        assert len(sections) <= 1, draft  # never across a level-2 heading
        if sections:
            assert draft.heading_path[:2] == ("Big Manual", f"Section {sections.pop()}")
        if "S1P8" in draft.text and draft.text.index("S1P8") < 40:
            assert draft.heading_path == ("Big Manual", "Section 1", "Detail 1")
    assert seen == {f"S{s}P{p}" for s in range(1, 7) for p in range(1, 9)}  # nothing lost


def test_small_subsections_join_the_open_chunk_but_level_two_sections_do_not() -> None:
    doc = parse(samples.markdown_guide().encode(), file_name="guide.md")
    drafts = chunk(doc, max_tokens=350)
    assert [(d.heading_path, d.start_line, d.end_line) for d in drafts] == [
        (("Daveloper Guide",), 6, 7),
        (("Daveloper Guide", "Install"), 11, 21),
        (("Daveloper Guide", "Configure"), 25, 27),
        (("Appendix",), 31, 31),
    ]
    install = drafts[1].text
    assert install.startswith("Daveloper Guide > Install\n\n- Create a virtual environment")
    assert "\n\nFrom source\n\nClone the repository" in install  # the merged subsection keeps its heading
    assert not body(drafts[1]).startswith("Install")  # the path's own headings are not repeated in the body


def test_long_section_continues_with_overlap_at_sentence_boundaries() -> None:
    sentences = [f"Sentence number {n} is short." for n in range(1, 61)]
    doc = parse(("# Notes\n\n" + " ".join(sentences) + "\n").encode(), file_name="notes.md")
    drafts = chunk(doc, max_tokens=60, overlap_tokens=15)
    assert_well_formed(drafts, 60)
    assert len(drafts) >= 5

    for previous, following in itertools.pairwise(drafts):
        first = re.match(r"Sentence number \d+ is short\.", body(following))
        assert first is not None
        overlap = body(previous)[body(previous).index(first.group()) :]  # from there to its end, previous ...
        assert body(following).startswith(overlap)  # ... is where following begins
        assert 0 < count_tokens(overlap) <= 15
        assert following.heading_path == ("Notes",)
    for draft in drafts:
        assert re.fullmatch(r"(Sentence number \d+ is short\. ?)+", body(draft))  # cut between sentences only
    numbers = [int(n) for d in drafts for n in re.findall(r"number (\d+)", d.text)]
    assert sorted(set(numbers)) == list(range(1, 61))


def test_no_overlap_across_headings() -> None:
    doc = parse(samples.markdown_guide().encode(), file_name="guide.md")
    drafts = chunk(doc, max_tokens=350, overlap_tokens=40)
    assert "Daveloper is a backend" not in drafts[1].text


def test_a_word_longer_than_the_budget_is_cut_so_every_chunk_fits() -> None:
    blob = "A" * 3000
    doc = ParsedDocument("text/plain", (Block(BlockKind.PARAGRAPH, f"Before. {blob} After."),))
    drafts = chunk(doc, max_tokens=64, overlap_tokens=8)
    assert_well_formed(drafts, 64)
    assert sum(d.text.count("A") for d in drafts) >= 3000


def test_pdf_chunks_carry_the_page_they_start_on() -> None:
    drafts = chunk(parse(samples.pdf_two_pages()), max_tokens=350)
    assert [(d.heading_path, d.page) for d in drafts] == [
        (("Installation Guide",), 1),
        (("Installation Guide", "Requirements"), 1),
        (("Usage",), 2),
    ]


def test_code_chunks_are_the_top_level_definitions_with_their_line_ranges() -> None:
    source = samples.python_module()
    doc = parse(source.encode(), file_name="client.py")
    drafts = chunk(doc, max_tokens=350)
    # A class that fits is one chunk: its methods are packed back together.
    tops = [(b.start_line, b.end_line, b.heading_path[:1]) for b in doc.blocks]
    merged: list[tuple[int, int, tuple[str, ...]]] = []
    for start, end, top in tops:
        if merged and top and merged[-1][2] == top:
            merged[-1] = (merged[-1][0], end, top)
        else:
            merged.append((start, end, top))
    assert [(d.start_line, d.end_line, d.heading_path) for d in drafts] == merged
    lines = source.split("\n")
    for draft in drafts:
        assert draft.text == "\n".join(lines[draft.start_line - 1 : draft.end_line])


def test_a_function_over_the_budget_is_split_by_lines_with_overlap_and_exact_ranges() -> None:
    statements = "\n".join(f"    value_{n} = compute(value_{n - 1}, {n})" for n in range(1, 80))
    source = textwrap.dedent("""\
        import math


        def small() -> int:
            return 1


        def big(value_0: int) -> int:
        """) + statements + "\n\n    return value_79\n"
    doc = parse(source.encode(), file_name="big.py")
    drafts = chunk(doc, max_tokens=100, overlap_tokens=20)
    assert_well_formed(drafts, 100)

    lines = source.split("\n")
    for draft in drafts:
        assert draft.text == "\n".join(lines[draft.start_line - 1 : draft.end_line])
    assert [(d.start_line, d.end_line) for d in drafts[:2]] == [(1, 1), (4, 5)]
    big = drafts[2:]
    assert len(big) > 3
    assert big[0].start_line == 8
    assert big[-1].end_line == len(lines) - 1
    for previous, following in itertools.pairwise(big):
        assert previous.start_line < following.start_line <= previous.end_line  # overlapping lines
        assert following.end_line > previous.end_line


def test_chunk_line_ranges_cover_their_markdown_text() -> None:
    source = samples.big_markdown(sections=2, paragraphs=6)
    lines = source.split("\n")
    drafts = chunk(parse(source.encode(), file_name="m.md"), max_tokens=90, overlap_tokens=15)
    for draft in drafts:
        span = "\n".join(lines[draft.start_line - 1 : draft.end_line])
        for sentence in re.split(r"(?<=\.)\s+", body(draft)):
            assert sentence in span, (draft, sentence)


def test_a_document_of_only_headings_still_yields_its_text() -> None:
    doc = parse(b"# One\n\n## Two\n\n# Three\n", file_name="h.md")
    drafts = chunk(doc)
    assert "Two" in " ".join(d.text for d in drafts)
    assert "Three" in " ".join(d.text for d in drafts)


def test_bad_budgets_are_rejected() -> None:
    doc = parse(b"text", file_name="a.txt")
    with pytest.raises(ValueError, match="overlap_tokens"):
        chunk(doc, max_tokens=100, overlap_tokens=60)
    with pytest.raises(ValueError, match="max_tokens"):
        chunk(doc, max_tokens=4, overlap_tokens=0)


# --- count_tokens ---------------------------------------------------------------------------------------------------


def test_count_tokens_rules() -> None:
    assert count_tokens("") == 0
    assert count_tokens("   \n\t ") == 0
    assert count_tokens("hello world") == 2
    assert count_tokens("internationalization") == 4  # 20 letters, 6 a token
    assert count_tokens("1234567") == 3  # digits in threes
    assert count_tokens("a.b()") == 5  # punctuation one each
    assert count_tokens("東京都") == 3


def test_count_tokens_is_additive_over_whitespace() -> None:
    a, b = "The event loop runs callbacks.", "x = f(y, 10_000)"
    assert count_tokens(f"{a}\n\n{b}") == count_tokens(a) + count_tokens(b)


def test_count_tokens_is_calibrated_to_about_three_quarters_of_a_word_per_token() -> None:
    prose = (
        "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness. A task group owns its tasks: when the block exits, every task has either finished or "
        "been cancelled, and errors are collected into an exception group that the caller handles."
    )
    ratio = len(prose.split()) / count_tokens(prose)
    assert 0.65 <= ratio <= 0.85


def large_class(methods: int = 12) -> str:
    """A class whose methods are small but which, whole, is many times a chunk's budget."""
    body = "\n\n".join(textwrap.indent(textwrap.dedent(f'''\
        def method_{n}(self, value: int) -> int:
            """Scale the value by {n}, then clamp it to the configured bounds of step {n}."""
            scaled = value * {n} + self.offset_{n}
            return max(self.low, min(self.high, scaled))'''), "    ") for n in range(methods))
    return f'class Scaler:\n    """Scales values."""\n\n    low = 0\n    high = 100\n\n{body}\n'


def test_small_methods_of_a_large_class_stay_whole_with_their_class_and_method_path() -> None:
    source = large_class()
    doc = parse(source.encode(), file_name="scaler.py")
    drafts = chunk(doc, max_tokens=120, overlap_tokens=20)
    assert_well_formed(drafts, 120)
    assert len(drafts) > 3
    lines = source.split("\n")
    for n in range(12):
        start = lines.index(f"    def method_{n}(self, value: int) -> int:") + 1
        # Each method is inside exactly one chunk, whole (its four lines).
        holders = [d for d in drafts if d.start_line <= start + 3 and d.end_line >= start]
        assert len(holders) == 1, (n, holders)
        assert holders[0].start_line <= start
        assert holders[0].end_line >= start + 3
    for draft in drafts:
        assert draft.text == "\n".join(lines[draft.start_line - 1 : draft.end_line])
        assert draft.heading_path[:1] == ("class Scaler",)
    single = [d for d in drafts if d.text.lstrip().startswith("def method_") and d.text.count("def ") == 1]
    assert single
    assert all(d.heading_path == ("class Scaler", d.text.split("(")[0].strip()) for d in single)


def test_methods_of_a_class_in_other_languages_get_their_path_too() -> None:
    methods = "\n\n".join(f"""    /** Scales by {n}. */
    public int scale{n}(int value) {{
        int scaled = value * {n} + offset{n};
        return Math.max(low, Math.min(high, scaled));
    }}""" for n in range(10))
    source = f"package demo;\n\npublic class Scaler {{\n    private int low = 0;\n\n{methods}\n}}\n"
    doc = parse(source.encode(), file_name="Scaler.java")
    assert [b.heading_path for b in doc.blocks][1:4] == [
        ("public class Scaler",), ("public class Scaler", "public int scale0(int value)"),
        ("public class Scaler", "public int scale1(int value)")]
    drafts = chunk(doc, max_tokens=64, overlap_tokens=8)
    assert_well_formed(drafts, 64)
    assert all(d.heading_path[:1] == ("public class Scaler",) for d in drafts[1:])
    lines = source.split("\n")
    for n in range(10):
        start = lines.index(f"    public int scale{n}(int value) {{") + 1
        holders = [d for d in drafts if d.start_line <= start + 3 and d.end_line >= start]
        assert len(holders) == 1, (n, holders)
    assert any(d.heading_path == ("public class Scaler", "public int scale3(int value)") for d in drafts)
