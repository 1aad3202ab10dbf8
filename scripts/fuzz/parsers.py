"""Coverage-guided fuzzing of the document parser with atheris (libFuzzer), for long runs.

Every input is parsed under each file name hint; anything but a document or
an ``InvalidArgument`` is a crash, which libFuzzer saves as ``crash-<sha1>``.
Slow inputs are reported with ``-timeout=<s>``, big ones with ``-rss_limit_mb``.
See ``scripts/fuzz/README.md`` for the commands.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from daveloper.documents.parsing import parse
    from daveloper.errors import InvalidArgument

NAMES = ("", "a.pdf", "a.docx", "a.html", "a.md", "a.py", "a.txt", "a.go")


def test_one_input(data: bytes) -> None:
    """The first byte picks the file name hint; the rest is the document."""
    if not data:
        return
    with contextlib.suppress(InvalidArgument):
        parse(data[1:], file_name=NAMES[data[0] % len(NAMES)])


def write_seed_corpus(directory: str) -> None:
    """One file per real sample (tests/documents/samples.py, needs the test extra), hint byte first."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests/
    from tests.fuzz.test_parsers import SAMPLES

    Path(directory).mkdir(parents=True, exist_ok=True)
    for kind, (data, name) in SAMPLES.items():
        (Path(directory) / kind).write_bytes(bytes([NAMES.index(name)]) + data)


def main() -> None:
    if sys.argv[1:2] == ["--seed-corpus"]:
        write_seed_corpus(sys.argv[2])
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
