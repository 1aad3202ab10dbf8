"""Starting the server loads only what serving needs: heavy libraries load on the path that uses them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

#: Imported on first use only: the OpenAI SDK (chat and embedding providers), qdrant-client (a remote
#: Qdrant), trafilatura (HTML), pypdf (PDF), python-docx (Word).
LAZY = ("openai", "qdrant_client", "trafilatura", "pypdf", "docx")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=50)
    return [name for name in json.loads(out.stdout) if name.split(".", 1)[0] in LAZY]


def test_importing_the_app_loads_no_lazily_loaded_library() -> None:
    assert _loaded_after("import daveloper.app, daveloper.cli") == []


def test_each_lazy_library_still_loads_where_it_is_used() -> None:
    # The check above can fail: the same probe sees the libraries once their code paths import them.
    loaded = _loaded_after(
        "from daveloper.documents.parsing import markup, office, pdf\n"
        "markup._extract('<html><body><p>hello</p></body></html>', favor_recall=True)\n"
        "from daveloper.agent.llm import OpenAIChatModel\n"
        "import qdrant_client, docx, pypdf"
    )
    assert {name.split(".", 1)[0] for name in loaded} == set(LAZY)
