"""A raw HTTP/2 client (h2 over TLS) for tests that need to send what httpx would not."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events

from klockproxy.sandbox.server import Sandbox


class RawH2:
    """An HTTP/2 client made with the h2 library itself: unlike httpx, it can send the
    connection-specific headers HTTP/2 forbids, and it resets streams it abandons."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.status: dict[int, int] = {}
        self.body: dict[int, bytearray] = {}
        self.ended: set[int] = set()

    @classmethod
    async def open(cls, sb: Sandbox) -> RawH2:
        return await cls.connect(sb.url, sb.ca_pem)

    @classmethod
    async def connect(cls, url: str, ca_pem: bytes) -> RawH2:
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        ctx.set_alpn_protocols(["h2"])
        host, port = url.removeprefix("https://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
        if writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            writer.close()
            raise AssertionError(f"{url} did not negotiate h2")
        return cls(reader, writer)

    def send(self, headers: list[tuple[str, str]]) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=True)
        self.body[sid] = bytearray()
        self.writer.write(self.conn.data_to_send())
        return sid

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid)
        self.writer.write(self.conn.data_to_send())

    async def until(self, done: Callable[[], bool]) -> None:
        """Read frames until ``done()``; fails if the front closes the connection first."""
        while not done():
            data = await self.reader.read(65536)
            assert data, "the front closed the connection"
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.status[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    self.body[event.stream_id].extend(event.data)
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError("the front reset the stream")
            self.writer.write(self.conn.data_to_send())

    def close(self) -> None:
        self.writer.close()


def h2_request(url: str, token: str, method: str, path: str) -> list[tuple[str, str]]:
    """The headers of an HTTP/2 request to ``url`` with a bearer token."""
    authority = url.removeprefix("https://")
    return [(":method", method), (":scheme", "https"), (":authority", authority),
            (":path", path), ("authorization", f"Bearer {token}")]  # fmt: skip
