"""The package's public surface stays small and deliberate."""

import daveloper


def test_exported_members() -> None:
    assert sorted(daveloper.__all__) == [
        "App", "Call", "DaveloperError", "Servicer", "Settings", "__version__", "open_app", "public", "serve",
    ]
    for name in daveloper.__all__:
        assert hasattr(daveloper, name), name
