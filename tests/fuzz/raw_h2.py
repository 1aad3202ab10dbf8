"""A raw HTTP/2 client for hostile gRPC requests: header bytes that no gRPC client library would send."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

import h2.config
import h2.connection
import h2.events


class RawH2:
    """One HTTP/2 connection to a gRPC server; each :meth:`call` is one stream on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str) -> None:
        self._reader, self._writer, self._authority = reader, writer, authority
        self._conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self._conn.initiate_connection()
        self._writer.write(self._conn.data_to_send())

    @classmethod
    async def connect(cls, host: str, port: int) -> RawH2:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def call(self, path: str, headers: Sequence[tuple[bytes, bytes]], message: bytes | None = b"",
                   within: float = 5.0) -> dict[str, str]:
        """Send one unary request; the response headers and trailers (``reset`` if the stream was reset).

        ``message`` None sends no message at all (the stream ends after the headers).

        Raises ``ConnectionError`` when the server drops the whole connection.
        """
        stream = self._conn.get_next_available_stream_id()
        self._conn.send_headers(stream, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
            (b":authority", self._authority.encode()), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"), *headers])
        if message is None:
            self._conn.end_stream(stream)
        else:
            self._conn.send_data(stream, b"\x00" + struct.pack(">I", len(message)) + message, end_stream=True)
        self._writer.write(self._conn.data_to_send())
        answer: dict[str, str] = {}
        async with asyncio.timeout(within):
            while True:
                data = await self._reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed the connection")
                for event in self._conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if getattr(event, "stream_id", stream) != stream:
                        continue
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        answer.update({k.decode(): v.decode() for k, v in event.headers})
                    elif isinstance(event, h2.events.StreamReset):
                        answer["reset"] = str(event.error_code)
                        return answer
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        raise ConnectionError("the server ended the connection")
                    if isinstance(event, h2.events.StreamEnded):
                        self._writer.write(self._conn.data_to_send())
                        return answer
                self._writer.write(self._conn.data_to_send())

    async def aclose(self) -> None:
        self._conn.close_connection()
        self._writer.write(self._conn.data_to_send())
        self._writer.close()
        await self._writer.wait_closed()
