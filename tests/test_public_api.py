"""The package's public surface stays small and deliberate."""

import daveloper


def test_exported_members() -> None:
    assert sorted(daveloper.__all__) == [
        "App", "Call", "DaveloperError", "Servicer", "Settings", "__version__", "open_app", "public", "serve",
    ]
    for name in daveloper.__all__:
        assert hasattr(daveloper, name), name


def test_importing_the_framework_does_not_load_the_application() -> None:
    import subprocess
    import sys

    heavy = ("qdrant_client", "openai", "trafilatura")
    probe = f"import sys, daveloper.rpc; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
