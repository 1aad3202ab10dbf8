"""What a document is, judged by its content first and its name and declared type second.

The file name and the declared media type are claims the client makes; the
bytes are evidence. Magic numbers (``%PDF-``, a zip holding
``word/document.xml``) always win; for text, strong markup (a doctype, an
``<html>`` tag) wins too, and the claims only decide between readings the
content allows (Markdown or plain text, which programming language).
"""

from __future__ import annotations

import codecs
import io
import json
import re
import zipfile
from dataclasses import dataclass
from enum import Enum

import charset_normalizer

from daveloper.documents.parsing.limits import MEDIA_TYPE, Reason, refuse

__all__ = ["DOCX_MEDIA_TYPE", "Format", "Sniffed", "decode_text", "sniff"]

DOCX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


class Format(Enum):
    """The parser family that reads a document."""

    PDF = "pdf"
    DOCX = "docx"
    HTML = "html"
    MARKDOWN = "markdown"
    PLAIN = "plain"
    CODE = "code"


@dataclass(frozen=True, slots=True)
class Sniffed:
    """The verdict: how to read the document, and its text when it is text."""

    format: Format
    media_type: str
    language: str = ""
    #: The decoded text (newlines normalised to ``\n``) for text formats, else "".
    text: str = ""


#: language -> (media type, file extensions). Names such as ``Dockerfile`` are in :data:`_FILE_NAMES`.
_LANGUAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "python": ("text/x-python", ("py", "pyi", "pyw")),
    "javascript": ("text/javascript", ("js", "mjs", "cjs", "jsx")),
    "typescript": ("text/x-typescript", ("ts", "tsx", "mts", "cts")),
    "go": ("text/x-go", ("go",)),
    "rust": ("text/x-rust", ("rs",)),
    "java": ("text/x-java", ("java",)),
    "kotlin": ("text/x-kotlin", ("kt", "kts")),
    "scala": ("text/x-scala", ("scala", "sc")),
    "swift": ("text/x-swift", ("swift",)),
    "c": ("text/x-c", ("c", "h")),
    "cpp": ("text/x-c++", ("cpp", "cc", "cxx", "hpp", "hh", "hxx", "ipp")),
    "csharp": ("text/x-csharp", ("cs",)),
    "ruby": ("text/x-ruby", ("rb", "rake", "gemspec")),
    "php": ("text/x-php", ("php",)),
    "perl": ("text/x-perl", ("pl", "pm")),
    "lua": ("text/x-lua", ("lua",)),
    "r": ("text/x-r", ("r",)),
    "dart": ("text/x-dart", ("dart",)),
    "elixir": ("text/x-elixir", ("ex", "exs")),
    "erlang": ("text/x-erlang", ("erl", "hrl")),
    "haskell": ("text/x-haskell", ("hs",)),
    "ocaml": ("text/x-ocaml", ("ml", "mli")),
    "clojure": ("text/x-clojure", ("clj", "cljs", "edn")),
    "shell": ("text/x-shellscript", ("sh", "bash", "zsh", "fish", "ksh")),
    "powershell": ("text/x-powershell", ("ps1", "psm1")),
    "sql": ("application/sql", ("sql",)),
    "yaml": ("application/yaml", ("yaml", "yml")),
    "toml": ("application/toml", ("toml",)),
    "json": ("application/json", ("json", "jsonc", "json5", "ipynb")),
    "xml": ("application/xml", ("xml", "xsd", "xsl", "svg", "plist")),
    "ini": ("text/x-ini", ("ini", "cfg", "conf", "properties")),
    "css": ("text/css", ("css", "scss", "sass", "less")),
    "vue": ("text/x-vue", ("vue", "svelte")),
    "graphql": ("application/graphql", ("graphql", "gql")),
    "protobuf": ("text/x-protobuf", ("proto",)),
    "hcl": ("text/x-hcl", ("tf", "hcl")),
    "groovy": ("text/x-groovy", ("groovy", "gradle")),
    "dockerfile": ("text/x-dockerfile", ("dockerfile",)),
    "makefile": ("text/x-makefile", ("mk", "mak")),
}
_FILE_NAMES = {"dockerfile": "dockerfile", "containerfile": "dockerfile", "makefile": "makefile",
               "gnumakefile": "makefile", "rakefile": "ruby", "gemfile": "ruby", "jenkinsfile": "groovy"}
_BY_EXTENSION = {ext: lang for lang, (_, exts) in _LANGUAGES.items() for ext in exts}
_BY_MEDIA_TYPE = {media: lang for lang, (media, _) in _LANGUAGES.items()} | {
    "text/x-script.python": "python", "application/x-python": "python", "application/javascript": "javascript",
    "application/x-javascript": "javascript", "application/typescript": "typescript", "text/typescript": "typescript",
    "text/x-java-source": "java", "text/x-csrc": "c", "text/x-chdr": "c", "text/x-c++src": "cpp",
    "text/x-sh": "shell", "application/x-sh": "shell", "text/x-php": "php", "application/x-httpd-php": "php",
    "application/x-yaml": "yaml", "text/yaml": "yaml", "text/x-yaml": "yaml", "text/x-toml": "toml",
    "text/json": "json", "text/xml": "xml", "image/svg+xml": "xml", "text/x-sql": "sql",
}
_SHEBANG = {"python": "python", "node": "javascript", "deno": "typescript", "bash": "shell", "sh": "shell",
            "zsh": "shell", "ruby": "ruby", "perl": "perl", "php": "php"}

_HTML_NAMES = ({"html", "htm", "xhtml"}, {"text/html", "application/xhtml+xml"})
_MARKDOWN_NAMES = ({"md", "markdown", "mdown", "mkd", "mkdn", "mdx"}, {"text/markdown", "text/x-markdown"})
_PLAIN_NAMES = ({"txt", "text", "log", "rst", "csv", "tsv"}, {"text/plain", "text/csv", "text/x-rst"})

#: Magic numbers of common binary formats, to say what was sent when it is not text.
_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF (WebP, WAV, AVI) file"), (b"\x1f\x8b", "a gzip archive"), (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ", "an xz archive"), (b"7z\xbc\xaf", "a 7z archive"), (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an ELF executable"), (b"MZ", "a Windows executable"), (b"\x00asm", "a WebAssembly module"),
    (b"OggS", "an Ogg file"), (b"ID3", "an MP3 file"),
)
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_HIGH_BYTES = bytes(range(0x80, 0x100))

_STRONG_HTML = re.compile(r"<!doctype\s+html|<html[\s>]", re.IGNORECASE)
_HTML_TAG = re.compile(
    r"</(?:html|head|body|title|div|span|p|a|article|section|main|nav|table|ul|ol|li|h[1-6]|script|style)>",
    re.IGNORECASE,
)
_LEADING_MARKUP = re.compile(r"\A\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--.*?-->\s*)*", re.DOTALL)
_MARKDOWN_STRONG = re.compile(r"^(?:#{1,6}[ \t]+\S|```|~~~)", re.MULTILINE)
_MARKDOWN_WEAK = re.compile(
    r"^[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t]+\S|^>[ \t]|^\|.*\|[ \t]*$|\[[^\]\n]{1,256}\]\([^)\s]{1,256}\)"
    r"|\*\*[^*\n]+\*\*|`[^`\n]+`",
    re.MULTILINE,
)  # the link's parts are bounded: unbounded, a line of 65k "[" took 14 s (every "[" scanned to the line's end)


def sniff(data: bytes, *, file_name: str = "", declared_type: str = "") -> Sniffed:
    """Decide how to read ``data``; refuse empty, binary and unrecognised content."""
    if not data.strip():
        raise refuse(Reason.EMPTY_DOCUMENT, "the document is empty")
    if data.lstrip().startswith(b"%PDF-") or (b"%PDF-" in data[:1024] and b"%%EOF" in data[-2048:]):
        # Readers accept junk before the header within the first KiB; then the end marker must be there too,
        # so that a text merely mentioning "%PDF-" early on stays text.
        return Sniffed(Format.PDF, "application/pdf")
    if data.startswith(_ZIP_MAGIC):
        return _sniff_zip(data)
    if data.startswith(_OLE2_MAGIC):
        if "EncryptedPackage".encode("utf-16-le") in data:
            raise refuse(Reason.ENCRYPTED_DOCUMENT, "the Office document is password protected")
        raise refuse(Reason.UNSUPPORTED_MEDIA_TYPE, "legacy Office files (.doc, .xls, .ppt) are not supported; "
                     "save it as .docx, PDF or text", field=MEDIA_TYPE)
    if data.startswith(b"{\\rtf"):
        raise refuse(Reason.UNSUPPORTED_MEDIA_TYPE, "RTF documents are not supported; save it as .docx, PDF or text",
                     field=MEDIA_TYPE)

    media, _, params = declared_type.partition(";")
    media = media.strip().lower()
    charset = re.search(r"charset\s*=\s*\"?([\w.:-]+)", params, re.IGNORECASE)
    text = decode_text(data, charset.group(1) if charset else "")
    if text is None:
        what = next((what for magic, what in _BINARY_MAGIC if data.startswith(magic)), "binary")
        raise refuse(Reason.UNSUPPORTED_MEDIA_TYPE, f"the content is {what}, not a document we can read",
                     field=MEDIA_TYPE)
    if not text.strip():
        raise refuse(Reason.EMPTY_DOCUMENT, "the document is empty")
    return _sniff_text(text, file_name, media)


def decode_text(data: bytes, charset: str = "") -> str | None:
    """``data`` as text with ``\\n`` newlines, or ``None`` when it is not text.

    Order: a byte-order mark; UTF-8 (by far the most common), also when a few
    bytes of it are damaged; the declared ``charset``; then charset-normalizer's
    detection.
    """
    text: str | None = None
    for bom, codec in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                       (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            text = _try_decode(data, codec)
            break
    else:
        if b"\x00" in data[:8192]:  # no text encoding without a BOM puts NULs in text
            return None
        text = _try_decode(data, "utf-8") or _mostly_utf8(data)
        if text is None and charset:
            text = _try_decode(data, charset)
        if text is None:
            text = _detect(data)
    if text is None or _looks_binary(text):
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _mostly_utf8(data: bytes) -> str | None:
    """UTF-8 with a few invalid bytes replaced, when at least 95 % of the non-ASCII bytes are valid UTF-8.

    Text in a legacy 8-bit code page has isolated high bytes, almost none of
    which form valid UTF-8, so it does not pass; damaged UTF-8 does, instead of
    being detected as some code page and turned into mojibake throughout.
    """
    high = len(data) - len(data.translate(None, _HIGH_BYTES))
    text = data.decode("utf-8", errors="replace")
    damaged = text.count("\ufffd")
    return text if high and damaged * 20 <= high else None


def _detect(data: bytes) -> str | None:
    """charset-normalizer's verdict, except that windows-1252 wins a near tie.

    On short Western European text the detector often rates several single-byte
    code pages about equally and picks a Baltic or Central European one;
    windows-1252 is by far the most common of them (the web's default for
    "latin-1"), so it is the better bet when it is about as plausible.
    """
    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        return None
    for match in matches:
        if "cp1252" in match.could_be_from_charset and match.chaos <= best.chaos + 0.1:
            return _try_decode(data, "cp1252") or str(best)
    return str(best)


def _try_decode(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


#: Unicode category Cc is exactly U+0000-001F and U+007F-009F; less \t \n \v \f \r (09-0D) and ESC (1B).
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")


def _looks_binary(text: str) -> bool:
    """Control characters in more than 2 % of the first 8 K characters.

    Whitespace controls and ESC (colour codes in captured terminal output) do not count.
    """
    sample = text[:8192]
    return len(_CONTROLS.findall(sample)) > len(sample) / 50


def _sniff_zip(data: bytes) -> Sniffed:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
    except Exception as exc:  # zipfile raises BadZipFile, struct.error and more: none may escape
        raise refuse(Reason.CORRUPT_DOCUMENT, f"the ZIP container is damaged ({exc})") from exc
    if "word/document.xml" in names:
        return Sniffed(Format.DOCX, DOCX_MEDIA_TYPE)
    raise refuse(Reason.UNSUPPORTED_MEDIA_TYPE, "the content is a ZIP archive that is not a Word (.docx) document",
                 field=MEDIA_TYPE)


def _sniff_text(text: str, file_name: str, media: str) -> Sniffed:
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    ext = base.rsplit(".", 1)[-1] if "." in base else ""

    def claims(names: tuple[set[str], set[str]]) -> bool:
        return ext in names[0] or media in names[1]

    head = _LEADING_MARKUP.sub("", text[:4096], count=1)
    starts_with_tag = head.startswith("<")
    if starts_with_tag and _STRONG_HTML.search(head[:1024]):
        return Sniffed(Format.HTML, "text/html", text=text)
    if claims(_HTML_NAMES) and _HTML_TAG.search(head):
        return Sniffed(Format.HTML, "text/html", text=text)
    language = _BY_EXTENSION.get(ext) or _FILE_NAMES.get(base) or _BY_MEDIA_TYPE.get(media, "")
    if language:
        return _code(language, text)
    if claims(_MARKDOWN_NAMES):
        return Sniffed(Format.MARKDOWN, "text/markdown", text=text)
    if claims(_PLAIN_NAMES):
        return Sniffed(Format.PLAIN, "text/plain", text=text)
    # No usable claim (none, application/octet-stream, or one the content contradicts): content alone.
    if starts_with_tag and _HTML_TAG.search(head):
        return Sniffed(Format.HTML, "text/html", text=text)
    if language := _shebang_language(text):
        return _code(language, text)
    if text.lstrip()[:1] in ("{", "[") and _is_json(text):
        return _code("json", text)
    if _MARKDOWN_STRONG.search(text) or len(_MARKDOWN_WEAK.findall(text, 0, 65536)) >= 3:
        return Sniffed(Format.MARKDOWN, "text/markdown", text=text)
    return Sniffed(Format.PLAIN, "text/plain", text=text)


def _shebang_language(text: str) -> str:
    """``#!/usr/bin/env python3`` -> python."""
    if not text.startswith("#!"):
        return ""
    words = [word.rsplit("/", 1)[-1] for word in text[2:].split("\n", 1)[0].split() if not word.startswith("-")]
    if words and words[0] == "env":
        words = words[1:]
    return _SHEBANG.get(re.sub(r"[\d.]+$", "", words[0]), "") if words else ""


def _code(language: str, text: str) -> Sniffed:
    return Sniffed(Format.CODE, _LANGUAGES[language][0], language=language, text=text)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True
