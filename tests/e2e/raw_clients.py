"""Raw clients for adversarial end-to-end tests (no tests of its own): bytes on a TLS (or
plain) socket for HTTP/1.1, and the h2 library with its own validation switched off for
HTTP/2, so a test can send what no HTTP library would (CR/LF in a field, ``#`` in a target).
"""

from __future__ import annotations

import base64
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import yaml

TIMEOUT = 30.0


@dataclass
class Endpoint:
    """Host, port, CA and bearer token of a server, read from the kubeconfig written for it."""

    host: str
    port: int
    ca_pem: str
    token: str

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Endpoint:
        config = yaml.safe_load(path.read_text())
        cluster = config["clusters"][0]["cluster"]
        url = urlsplit(cluster["server"])
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        token = config["users"][0]["user"]["token"]
        return cls(url.hostname or "127.0.0.1", url.port or 443, ca, token)

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    def _tls(self, alpn: str) -> ssl.SSLSocket:
        context = ssl.create_default_context(cadata=self.ca_pem)
        context.set_alpn_protocols([alpn])
        sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
        return context.wrap_socket(sock, server_hostname=self.host)

    def http11(self, data: bytes, *, tls: bool = True) -> bytes:
        """Send ``data`` as it is and read until the server closes (send ``Connection:
        close``); a reset or a timeout ends the read too. Returns all bytes received."""
        sock: socket.socket = (
            self._tls("http/1.1")
            if tls
            else socket.create_connection((self.host, self.port), timeout=TIMEOUT)
        )
        received = bytearray()
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionError, TimeoutError, ssl.SSLError):
            pass
        finally:
            sock.close()
        return bytes(received)

    def h2(self, headers: list[tuple[str, str]], body: bytes = b"") -> H2Answer:
        """One HTTP/2 request with exactly these header fields (pseudo-headers first)."""
        sock = self._tls("h2")
        try:
            if sock.selected_alpn_protocol() != "h2":
                raise AssertionError(f"{self.authority} did not negotiate h2")
            config = h2.config.H2Configuration(
                client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
            )
            conn = h2.connection.H2Connection(config=config)
            conn.initiate_connection()
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=not body)
            if body:
                conn.send_data(sid, body, end_stream=True)
            sock.sendall(conn.data_to_send())
            answer = H2Answer()
            while not answer.ended:
                try:
                    data = sock.recv(65536)
                except (ConnectionError, TimeoutError, ssl.SSLError):
                    answer.ended = True
                    break
                if not data:
                    break
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    answer.take(event, sid, conn)
                sock.sendall(conn.data_to_send())
            return answer
        finally:
            sock.close()


@dataclass
class H2Answer:
    """What came back on the stream: status, body, and whether the stream or the whole
    connection was refused instead."""

    status: int | None = None
    body: bytearray = field(default_factory=bytearray)
    reset: bool = False
    terminated: bool = False
    ended: bool = False

    def take(self, event: h2.events.Event, sid: int, conn: h2.connection.H2Connection) -> None:
        if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
            self.status = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
            self.body += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
            self.ended = True
        elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
            self.reset = self.ended = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = self.ended = True


def h2_headers(
    endpoint: Endpoint, method: str, path: str, *extra: tuple[str, str]
) -> list[tuple[str, str]]:
    """The header fields of an HTTP/2 request with the endpoint's bearer token."""
    return [
        (":method", method),
        (":scheme", "https"),
        (":authority", endpoint.authority),
        (":path", path),
        ("authorization", f"Bearer {endpoint.token}"),
        *extra,
    ]
