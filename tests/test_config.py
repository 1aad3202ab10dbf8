"""Settings come from the environment once, validated, with documented defaults."""

from pathlib import Path

import pytest

from daveloper.config import Address, Settings
from daveloper.errors import ConfigError


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
        ({"DAVELOPER_LOG_LEVEL": "LOUD"}, "log level"),
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
