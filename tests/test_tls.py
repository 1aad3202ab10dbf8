"""gRPC and the edge over TLS, with a self-signed certificate made for the test."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpclib.client import Channel
from grpclib.exceptions import StreamTerminatedError

from daveloper.app import App, open_app
from daveloper.config import Settings
from daveloper.errors import ConfigError
from generated.daveloper.v1 import CreateSessionRequest, SessionServiceStub

pytestmark = pytest.mark.timeout(30)


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "daveloper-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert, private = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, private


@pytest.fixture
async def tls_app(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[App, Path]]:
    cert, key = self_signed(tmp_path)
    async with open_app(settings.replace(tls_cert_file=cert, tls_key_file=key)) as app:
        yield app, cert


async def test_grpc_and_the_edge_serve_tls_only(tls_app: tuple[App, Path]) -> None:
    app, cert = tls_app
    client = ssl.create_default_context(cafile=str(cert))  # verifies the chain and the name (127.0.0.1)
    grpc_client = ssl.create_default_context(cafile=str(cert))
    grpc_client.set_alpn_protocols(["h2"])
    channel = Channel(app.grpc_addr.host, app.grpc_addr.port, ssl=grpc_client)
    try:
        created = await SessionServiceStub(channel).create_session(CreateSessionRequest(), timeout=5)
        assert created.token.startswith("v1.")
    finally:
        channel.close()

    plain = Channel(app.grpc_addr.host, app.grpc_addr.port)
    try:
        with pytest.raises(StreamTerminatedError):  # the server speaks TLS only
            await SessionServiceStub(plain).create_session(CreateSessionRequest(), timeout=2)
    finally:
        plain.close()

    assert app.edge.url.startswith("https://")
    async with aiohttp.ClientSession() as http:
        async with http.post(app.edge.url + "/daveloper.v1.SessionService/CreateSession", json={},
                             ssl=client) as response:  # edge → gRPC over TLS on loopback
            assert response.status == 200
            assert (await response.json())["token"].startswith("v1.")
        async with http.ws_connect(app.edge.url.replace("https", "wss") + "/ws", protocols=["daveloper.v1.json"],
                                   ssl=client) as ws:
            await ws.send_json({"type": "hello", "token": ""})
            assert (await ws.receive_json(timeout=5))["type"] == "welcome"


async def test_a_tls_handshake_never_finished_is_closed_after_the_header_timeout(settings: Settings,
                                                                                 tmp_path: Path) -> None:
    # asyncio's default bound is 60 s, and the connection guard only sees a connection once its
    # handshake is done: without a bound, a socket that never says ClientHello stays open a minute.
    cert, key = self_signed(tmp_path)
    async with open_app(settings.replace(tls_cert_file=cert, tls_key_file=key, header_timeout_seconds=0.3)) as app:
        edge_host, edge_port = app.edge.url.removeprefix("https://").rsplit(":", 1)
        for host, port in ((app.grpc_addr.host, app.grpc_addr.port), (edge_host, int(edge_port))):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"\x16\x03\x01")  # the start of a TLS record, then nothing
            try:
                async with asyncio.timeout(10):  # far below the 60 s default, far above 0.3 s
                    with contextlib.suppress(ConnectionError):
                        assert await reader.read() == b""
            finally:
                writer.close()


def test_tls_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Settings(tls_cert_file=tmp_path / "cert.pem")
