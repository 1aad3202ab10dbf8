"""The offline provider: a small rule-based "model" for deployments with no LLM endpoint.

It needs no network and no weights, yet takes the same path through the agent as a
real model: on a user turn it asks for a tool (``scrape_url`` for a URL,
``github_repo`` for an ``owner/repo``, else ``search_documents``), and once the tool
results are in it answers extractively from them — the sentences that best match
the question, each followed by the citation marker of its passage. It never
invents text that is not in a tool result, and it says so when it cannot help.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import re
from collections.abc import AsyncGenerator, Iterator, Sequence

from daveloper.agent.llm.passages import NO_PASSAGES, Passage, parse_passages
from daveloper.agent.model import Message, ModelDone, ModelEvent, TextDelta, ToolCallRequest, ToolSpec
from daveloper.documents.embeddings.bm25 import tokenize
from daveloper.documents.tokens import count_tokens

__all__ = ["TOOL_ERROR_PREFIX", "OfflineChatModel"]

#: A tool result starting with this (case-insensitive) reports a failure, not content.
TOOL_ERROR_PREFIX = "error:"

#: Words per streamed delta; control goes back to the event loop after every delta.
_WORDS_PER_DELTA = 3
_MAX_SENTENCES = 4
#: A longer sentence is left out rather than cut.
_MAX_SENTENCE_CHARS = 600
_SUMMARY_LINES = 3

OFFLINE_NOTICE = (
    "I am Daveloper's offline provider: no language model is configured, so I can only answer "
    "from the documents in this session, and no document search is available for this turn."
)
_NOTHING_FOUND = "Nothing in this session's documents matches your question."

_URL = re.compile(r"https?://[^\s<>\"'`)\]}]+", re.IGNORECASE)
# GitHub's rules: an owner is letters, digits and single inner hyphens (no dots); a repository
# also allows "." and "_". The lookarounds refuse pieces of longer paths (a/b/c), URLs and dates.
_REPOSITORY = re.compile(
    r"(?<![\w./:@-])([A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38})/([A-Za-z0-9_.-]{1,100})(?![\w/-])"
)
#: "and/or" is not a repository; neither is "src/main.py".
_NOT_REPOSITORIES = frozenset({
    "and/or", "either/or", "input/output", "read/write", "yes/no", "true/false", "on/off", "client/server",
    "tcp/ip", "i/o", "n/a", "w/o", "he/she", "his/her", "him/her", "pros/cons", "start/stop", "open/close",
    "get/set", "request/response", "sync/async",
})
_PATH_OWNERS = frozenset({
    "src", "lib", "libs", "test", "tests", "doc", "docs", "app", "apps", "bin", "etc", "usr", "var", "tmp", "home",
    "config",
})
_FILE_SUFFIX = re.compile(r"\.(py|md|rst|txt|json|ya?ml|toml|cfg|ini|lock|sh|ts|tsx|rs|go|c|h|cpp|java|html|css)$",
                          re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(`*_A-Z0-9])")
#: Starts like a sentence (a capital, a digit, a quote or markup) and ends like one.
_WHOLE_SENTENCE = re.compile(r"[\"'(`*_A-Z0-9].*[.!?][\"')`*_]*", re.DOTALL)
#: A source file's name: its passages are quoted by the line, not the sentence.
_CODE_FILE = re.compile(r"\.(py|pyi|js|mjs|cjs|jsx|ts|tsx|rs|go|c|h|cc|cpp|hpp|java|kt|rb|php|cs|swift|scala|sh|sql)$",
                        re.IGNORECASE)
#: A piece up to its last sentence end that is followed by more text.
_UP_TO_LAST_END = re.compile(r".*[.!?][\"')`*_]*(?=\s)", re.DOTALL)
#: A line that starts a block of its own: a heading, a list item, a quote.
_BLOCK_START = re.compile(r"(#{1,6}|[-*+]|\d{1,3}[.)]|>)\s+")
_WORD = re.compile(r"\S+\s*")


@functools.cache
def _filler_terms() -> frozenset[str]:
    """Request words that say nothing about the topic ("please explain what the docs say about ...")."""
    return frozenset(tokenize("tell explain describe please show know need want docs document documents say says"))


def _question_terms(text: str) -> set[str]:
    return set(tokenize(text)) - _filler_terms()


def find_url(text: str) -> str | None:
    """The first http(s) URL in ``text``, without trailing punctuation."""
    match = _URL.search(text)
    return match.group().rstrip(".,;:!?") if match else None


def find_repository(text: str) -> str | None:
    """The first GitHub-like ``owner/repo`` in ``text`` that is not a URL, a path, a date or a word pair."""
    for match in _REPOSITORY.finditer(_URL.sub(" ", text)):
        owner, repo = match.group(1), match.group(2).rstrip(".")
        candidate = f"{owner}/{repo}"
        if (not repo or repo in (".", "..") or owner.isdigit() or repo.isdigit()
                or candidate.lower() in _NOT_REPOSITORIES or owner.lower() in _PATH_OWNERS
                or _FILE_SUFFIX.search(repo)):
            continue
        return candidate.removesuffix(".git")
    return None


def _sentences(text: str) -> Iterator[str]:
    """The whole sentences of a passage, in order.

    A passage is a chunk: it opens with its heading path, may carry headings of merged
    sections, lists and code, and may start or end mid-sentence where a long section was
    split. Lines of one paragraph are joined (a line break is not a sentence end); then
    only pieces that read as sentences are kept: starting like one, ending in ``.``, ``!``
    or ``?``, and not too long to quote whole. Headings, labels and fragments are not.
    """
    for paragraph in _paragraphs(text):
        for piece in _SENTENCE_END.split(paragraph):
            sentence = _whole(piece.strip())
            if sentence is not None:
                yield sentence


def _whole(piece: str) -> str | None:
    """``piece`` as a quotable sentence, or ``None``.

    A piece that runs on past a sentence end (a lower-case word after a full stop, a
    fragment cut at the chunk's edge) keeps what ends properly and drops the rest.
    """
    if not _WHOLE_SENTENCE.fullmatch(piece):
        ended = _UP_TO_LAST_END.match(piece)
        if ended is None or not _WHOLE_SENTENCE.fullmatch(ended.group()):
            return None
        piece = ended.group()
    if len(piece) > _MAX_SENTENCE_CHARS or len(piece.split()) < 3:
        return None
    return piece


def _quotables(passage: Passage) -> Iterator[str]:
    """What may be quoted of a passage: whole lines of code for a source file, else whole sentences."""
    if _CODE_FILE.search(passage.title.split(" > ", 1)[0]):
        for raw in passage.text.splitlines():
            line = raw.strip()
            if len(line.split()) >= 2 and line != passage.title and len(line) <= _MAX_SENTENCE_CHARS:
                yield line
        return
    yield from _sentences(passage.text)


def _paragraphs(text: str) -> Iterator[str]:
    """Blocks of prose: a line joins the one before when it continues it (that one has no sentence end,
    and it starts in lower case); headings, list items and code fences start blocks of their own.

    Tool results fold a passage's blank lines (:func:`~daveloper.agent.llm.passages.format_passages`),
    so paragraph breaks cannot be told from line breaks; a heading line (no sentence end) followed by
    a capitalised sentence still ends up a block of its own, which is no sentence and is left out.
    """
    lines: list[str] = []
    fenced = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("```", "~~~")):
            fenced = not fenced
            continue
        item = _BLOCK_START.match(line)
        continues = bool(lines) and not lines[-1].endswith((".", "!", "?")) and line[:1].islower()
        if fenced or not line or item is not None or not continues:
            if lines:
                yield " ".join(lines)
            lines = []
            if fenced or not line:
                continue
            if item is not None:
                if item.group(1).startswith("#") or not line[item.end():]:
                    continue  # a heading is no prose
                line = line[item.end():]  # a list item is prose of its own
        lines.append(line)
    if lines:
        yield " ".join(lines)


def _cited(sentence: str, number: int) -> str:
    return f"{sentence} [{number}]"


def extract_answer(question: str, passages: Sequence[Passage]) -> str:
    """One to four sentences of ``passages`` that best match ``question``, each with its ``[n]`` marker.

    A sentence scores the number of distinct question terms it shares (stemmed, stop
    words dropped), discounted by its passage's rank so the search order breaks near-ties.
    """
    if not passages:
        return _NOTHING_FOUND
    terms = _question_terms(question)
    scored: list[tuple[float, int, int, str, int]] = []
    for rank, passage in enumerate(passages):
        for position, sentence in enumerate(_quotables(passage)):
            overlap = len(terms & set(tokenize(sentence)))
            if overlap:
                scored.append((overlap / (1 + 0.25 * rank), rank, position, sentence, passage.number))
    if not scored:
        # No shared words: quote the passage the search ranked first rather than pretend a match.
        for passage in passages:
            if (opening := next(_sentences(passage.text), None)) is not None:
                return f"The closest passage in your documents says: {_cited(opening, passage.number)}"
        first = passages[0]
        return (f"The closest passage in your documents, under “{first.title}”, has no sentence to quote "
                f"[{first.number}].")
    scored.sort(key=lambda item: (-item[0], item[1], item[2]))
    best = scored[0][0]
    chosen: list[str] = []
    for score, _, _, sentence, number in scored:
        if len(chosen) == _MAX_SENTENCES or score < best / 2:
            break
        cited = _cited(sentence, number)
        if cited not in chosen:
            chosen.append(cited)
    return "From your documents: " + " ".join(chosen)


def summarise(tool: str, result: str) -> str:
    """The opening lines of a non-search tool's result, cited when it comes as numbered passages."""
    passages = parse_passages(result)
    if passages:
        for passage in passages:
            sentences = list(itertools.islice(_sentences(passage.text), _SUMMARY_LINES))
            if sentences:
                return f"From {tool}: " + " ".join(_cited(sentence, passage.number) for sentence in sentences)
        first = passages[0]
        return f"{tool} stored “{first.title}”, which has no sentence to quote [{first.number}]."
    sentences = list(itertools.islice(_sentences(result), _SUMMARY_LINES))
    if not sentences:
        return f"{tool} returned nothing to quote."
    return f"From {tool}: " + " ".join(sentences)


def _tool_answer(question: str, message: Message) -> str:
    result = message.content.strip()
    tool = message.name or "the tool"
    if result.lower().startswith(TOOL_ERROR_PREFIX):
        detail = result[len(TOOL_ERROR_PREFIX):].strip()
        return f"{tool} failed: {detail}" if detail else f"{tool} failed."
    if tool == "search_documents":
        if not result or result == NO_PASSAGES:
            return _NOTHING_FOUND
        return extract_answer(question, parse_passages(result))
    return summarise(tool, result)


class OfflineChatModel:
    """A :class:`~daveloper.agent.model.ChatModel` that needs no endpoint: tools in, extracts out.

    Deterministic: the same messages and tools give the same events, call ids included.
    """

    def __init__(self, *, name: str = "offline") -> None:
        self.name = name

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        model: str = "",
        temperature: float | None = None,
        max_tokens: int = 0,
        session_id: str = "",
    ) -> AsyncGenerator[ModelEvent, None]:
        """Ask for one tool on a user turn; answer from the tool results on the next."""
        prompt_tokens = _prompt_tokens(messages, tools)
        question = next((m.content for m in reversed(messages) if m.role == "user"), "")
        results = _trailing_tool_results(messages)
        if results:
            answer = "\n\n".join(_tool_answer(question, message) for message in results)
        elif messages and messages[-1].role == "user" and (call := _choose_tool(messages, tools)):
            yield ModelDone(finish_reason="tool_calls", tool_calls=(call,), prompt_tokens=prompt_tokens,
                            completion_tokens=count_tokens(call.name) + count_tokens(call.arguments))
            return
        else:
            answer = OFFLINE_NOTICE
        for delta in _word_groups(answer):
            yield TextDelta(delta)
            # Everything here is in-process: give a cancel (or the other sessions) a chance to land.
            await asyncio.sleep(0)
        yield ModelDone(finish_reason="stop", prompt_tokens=prompt_tokens, completion_tokens=count_tokens(answer))


def _trailing_tool_results(messages: Sequence[Message]) -> list[Message]:
    results: list[Message] = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        results.append(message)
    return results[::-1]


def _choose_tool(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> ToolCallRequest | None:
    offered = {tool.name for tool in tools}
    text = messages[-1].content.strip()
    arguments: dict[str, str]
    if "scrape_url" in offered and (url := find_url(text)):
        name, arguments = "scrape_url", {"url": url}
    elif "github_repo" in offered and (repository := find_repository(text)):
        name, arguments = "github_repo", {"repository": repository}
    elif "search_documents" in offered and text:
        name, arguments = "search_documents", {"query": text}
    else:
        return None
    # Unique within the conversation and the same on every run.
    number = 1 + sum(len(m.tool_calls) for m in messages)
    return ToolCallRequest(call_id=f"call_offline_{number}", name=name, arguments=json.dumps(arguments))


def _prompt_tokens(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> int:
    total = sum(count_tokens(m.content) + sum(count_tokens(c.arguments) for c in m.tool_calls) for m in messages)
    return total + sum(count_tokens(f"{t.name} {t.description} {json.dumps(t.parameters)}") for t in tools)


def _word_groups(text: str) -> Iterator[str]:
    words = _WORD.findall(text)
    for start in range(0, len(words), _WORDS_PER_DELTA):
        yield "".join(words[start:start + _WORDS_PER_DELTA])
