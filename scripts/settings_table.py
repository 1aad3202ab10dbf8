"""Write the README's configuration table from the settings' declarations (``daveloper/config.py``).

    python scripts/settings_table.py          # rewrite the table in README.md
    python scripts/settings_table.py --check  # exit 1 if README.md's table differs

The table sits between two markers in the README; ``tests/test_config.py`` runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daveloper.config import configuration_table  # noqa: E402

BEGIN = "<!-- settings table: written by scripts/settings_table.py from daveloper/config.py -->\n"
END = "<!-- end of settings table -->\n"


def with_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by the generated table."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"README.md lacks the markers {BEGIN.strip()!r} and {END.strip()!r}")
    return head + BEGIN + configuration_table() + END + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is out of date")
    args = parser.parse_args()
    path = ROOT / "README.md"
    readme = path.read_text()
    updated = with_table(readme)
    if args.check:
        if updated != readme:
            print("README.md's configuration table is out of date: run python scripts/settings_table.py")
            return 1
        return 0
    path.write_text(updated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
