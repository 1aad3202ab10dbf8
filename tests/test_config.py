"""Settings come from the environment once, validated, with documented defaults."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from daveloper.config import Address, Settings, configuration_table
from daveloper.errors import ConfigError
from daveloper.settingspec import SettingSpec


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.grpc_addr == Address("127.0.0.1", 50051)
    assert settings.redis_url is None
    assert settings.qdrant_url is None
    assert settings.max_message_bytes == 4 * 1024 * 1024
    assert settings.log_level == "INFO"


def test_environment_and_overrides() -> None:
    env = {
        "DAVELOPER_GRPC_ADDR": "0.0.0.0:6000",
        "DAVELOPER_DATA_DIR": "/tmp/x",
        "DAVELOPER_REDIS_URL": "redis://h:1/0",
        "DAVELOPER_DRAIN_SECONDS": "2.5",
        "DAVELOPER_EVENT_RETENTION": "50",
        "DAVELOPER_LOG_LEVEL": "debug",
        "DAVELOPER_QDRANT_URL": "  ",  # blank means unset
    }
    settings = Settings.from_env(env, data_dir=Path("/srv/d"), log_level=None)
    assert settings.grpc_addr == Address("0.0.0.0", 6000)
    assert settings.data_dir == Path("/srv/d")  # the flag wins
    assert settings.redis_url == "redis://h:1/0"
    assert settings.drain_seconds == 2.5
    assert settings.event_retention == 50
    assert settings.log_level == "DEBUG"
    assert settings.qdrant_url is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DAVELOPER_GRPC_ADDR": "nohost"}, "HOST:PORT"),
        ({"DAVELOPER_GRPC_ADDR": "h:99999"}, "HOST:PORT"),
        ({"DAVELOPER_MAX_MESSAGE_BYTES": "big"}, "must be a number"),
        ({"DAVELOPER_MAX_MESSAGE_BYTES": "0"}, "must be positive"),
        ({"DAVELOPER_LOG_LEVEL": "LOUD"}, "log_level must be one of DEBUG"),
        ({"DAVELOPER_OTEL_ENABLED": "maybe"}, "true or false"),
        ({"DAVELOPER_RATE_UPLOADS": "5/week"}, "N/s, N/min or N/h"),
        ({"DAVELOPER_REDIS_PREFIX": "a{b}:"}, "redis_prefix must not contain"),
        ({"DAVELOPER_DRAIN_SECONDS": "-1"}, "must not be negative"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_ipv6_address_round_trips() -> None:
    addr = Address.parse("[::1]:50051")
    assert (addr.host, addr.port, str(addr)) == ("::1", 50051, "[::1]:50051")
    assert Settings().replace(log_level="ERROR").log_level == "ERROR"


ROOT = Path(__file__).resolve().parents[1]
FIELDS = dataclasses.fields(Settings)


def test_every_setting_is_declared_with_its_documentation() -> None:
    for spec_field in FIELDS:
        spec = spec_field.metadata.get("setting")
        assert isinstance(spec, SettingSpec), f"{spec_field.name} is not declared with setting()"
        assert spec.doc, spec_field.name


@pytest.mark.parametrize("spec_field", [f for f in FIELDS if f.metadata["setting"].gt == 0], ids=lambda f: f.name)
def test_declared_bounds_hold_for_the_environment(spec_field: dataclasses.Field[object]) -> None:
    variable = f"DAVELOPER_{spec_field.name.upper()}"
    with pytest.raises(ConfigError, match=f"{spec_field.name} must be positive"):
        Settings.from_env({variable: "0"})


def test_every_kind_of_setting_parses_from_its_variable() -> None:
    settings = Settings.from_env({
        "DAVELOPER_UPSTREAMS": "a:1, [::1]:2,", "DAVELOPER_ALLOWED_ORIGINS": "https://x.example/ ,http://y:8",
        "DAVELOPER_OTEL_ENABLED": "on", "DAVELOPER_TLS_CERT_FILE": "~/c.pem", "DAVELOPER_TLS_KEY_FILE": "/k.pem",
        "DAVELOPER_ROLE": "GRPC", "DAVELOPER_EMBEDDING_SIZE": "384", "DAVELOPER_RATE_ADDRESS_FACTOR": "1.5",
        "DAVELOPER_REDIS_PREFIX": "tenant-a:",
    })
    assert settings.upstreams == (Address("a", 1), Address("::1", 2))
    assert settings.allowed_origins == ("https://x.example", "http://y:8")
    assert settings.otel_enabled is True
    assert settings.tls_cert_file == Path("~/c.pem").expanduser()
    assert (settings.role, settings.embedding_size, settings.rate_address_factor) == ("grpc", 384, 1.5)
    assert settings.redis_prefix == "tenant-a:"


def test_validation_also_holds_for_values_given_in_code() -> None:
    with pytest.raises(ConfigError, match="ws_max_streams must be positive"):
        Settings(ws_max_streams=0)
    with pytest.raises(ConfigError, match="embedder must be one of bm25"):
        Settings(embedder="word2vec")


def test_the_readme_table_is_the_one_the_declarations_make() -> None:
    readme = (ROOT / "README.md").read_text()
    assert configuration_table() in readme
    for spec_field in FIELDS:
        assert f"| `DAVELOPER_{spec_field.name.upper()}` |" in readme
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "settings_table.py"), "--check"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout
