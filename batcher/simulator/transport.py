"""The simulator served: in-process to httpx (SimulatorTransport), or over HTTP on a socket
(make_server)."""

from __future__ import annotations

import contextlib
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from .references import FetchReference, fetch_over_http
from .server import Simulator
from .wire import Dropped, Refused, json_answer, signed

# --- in-process transport -----------------------------------------------------------------------

OWN_FILES = ("/_sim/refs/", "/_sim/uploads/")


class SimulatorTransport(httpx.AsyncBaseTransport):
    """Serves a Simulator to an httpx.AsyncClient in-process, faults included.

    A reference image fetched in-process (a request marked `batcher_reference`) is served only
    from the simulator's `/_sim/refs/` and `/_sim/uploads/`: any other reference URL (example.com,
    ...) is not on the simulator's host and cannot be reached, as on a machine offline
    (httpx.ConnectError)."""

    def __init__(self, simulator: Simulator):
        self.simulator = simulator

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = {k.lower(): v for k, v in request.headers.items()}
        if request.url.path == "/_sim/record":
            record = signed(json_answer(200, self.simulator.record()))
            return httpx.Response(record.status, headers=record.headers, content=record.body, request=request)
        if request.extensions.get("batcher_reference") and not request.url.path.startswith(OWN_FILES):
            raise httpx.ConnectError(f"[Errno -2] Name or service not known: {request.url.host} "
                                     "(not the simulator's host)", request=request)
        try:
            answer = self.simulator.handle(request.method, str(request.url), headers, body)
        except Refused:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request) from None
        except Dropped:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.",
                                            request=request) from None
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body, request=request)


# --- over HTTP ----------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    simulator: Simulator
    server: SimulatorServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, each answer waited
    # for the client's delayed ACK (about 45 ms on loopback), a latency no real API adds.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # `format`: the stdlib's parameter name
        pass  # quiet: the record says what happened

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/_sim/record":
            answer = signed(json_answer(200, self.simulator.record()))
        else:
            host = self.headers.get("host") or f"127.0.0.1:{self.server.server_address[1]}"
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                answer = self.simulator.handle(self.command, f"http://{host}{self.path}", headers, body,
                                               fetch=self.server.fetch_reference)
            except (Dropped, Refused):
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    do_GET = _serve
    do_POST = _serve


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the standard library's 5 reset a pool of clients connecting at once
    fetch_reference: FetchReference | None = None  # for a simulator without its own
    simulator: Simulator | None = None

    def server_close(self) -> None:
        super().server_close()
        if self.simulator is not None:
            self.simulator.close()  # its webhook senders: a closed server leaves no thread sending


def make_server(simulator: Simulator, host: str = "127.0.0.1", port: int = 0, *,
                fetch_reference: FetchReference | None = fetch_over_http) -> SimulatorServer:
    """An HTTP server for `simulator` on host:port (port 0 picks a free one). Reference URLs are
    fetched with the simulator's `fetch_reference`, else with this one (by default over HTTP)."""
    handler = type("Handler", (_Handler,), {"simulator": simulator})
    server = SimulatorServer((host, port), handler)
    server.fetch_reference = fetch_reference
    server.simulator = simulator
    return server
