"""The webhook listener: a small HTTP/1.1 server (anyio + h11) that turns a valid POST into a poke.

A webhook is a poke, never the truth: the body is read within bounds and thrown away, never
parsed. `check(path)` decides from the request path alone (query string ignored; the path as sent,
percent-encoding untouched) and answers the key to poke, or None: then 404 at once, costing no
poke. Everything from the network is hostile, so every connection is bounded: the head by
`max_head`, the body by `max_body`, the time a request takes to arrive whole (and an idle
keep-alive connection) by `read_timeout`, and the number of open connections by `max_connections`.
A failing connection, or a failing `check` or `poke` (logged, answered 500), never ends the listener.

Paths carry tokens: they are logged only at debug level and with their last segment cut ("…").
`check` and `poke` run on the event loop: they must return at once (an HMAC, a put_nowait).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import anyio
import anyio.abc
import h11
from anyio.abc import SocketAttribute
from anyio.streams.stapled import MultiListener

from ..errors import UsageError
from .webhooks import format_listen

log = logging.getLogger("batcher.webhooks")

RECEIVE_SIZE = 16 * 1024  # bytes read from a socket at a time: the head and body limits overshoot by this at most
LINGER_TIME, LINGER_BYTES = 2.0, 256 * 1024  # after an early error answer: read on this long, this much at most
ACCEPT_PAUSE = 0.1  # seconds to wait after a failed accept (out of file descriptors) before the next
OK_BODY = b'{"ok":true}'
ERROR_BODIES = {
    400: b'{"ok":false,"error":"bad request"}',
    404: b'{"ok":false,"error":"not found"}',
    413: b'{"ok":false,"error":"body too large"}',
    431: b'{"ok":false,"error":"request head too large"}',
    500: b'{"ok":false,"error":"internal error"}',
}


@dataclass(frozen=True)
class ListenerLimits:
    max_body: int = 64 * 1024  # bytes of a request body read at most (then 413)
    max_head: int = 16 * 1024  # request line + headers at most (then 431 or 400)
    read_timeout: float = 10.0  # a request must arrive whole within this (slow clients are cut off)
    max_connections: int = 256  # more at once: closed at once


@dataclass
class ListenerCounts:
    """What the listener saw, request by request (refused_busy and timed_out: by connection)."""

    accepted: int = 0  # valid pokes answered 200
    not_found: int = 0  # bad path or method: 404, no poke
    too_large: int = 0  # body over max_body: 413
    bad_request: int = 0  # malformed request or head too large: 400 / 431
    timed_out: int = 0  # cut off before a request arrived whole (idle keep-alive closes not counted)
    refused_busy: int = 0  # closed at once: max_connections were open
    failed: int = 0  # check or poke raised: 500


def redact(path: str) -> str:
    """A path fit for a log: its last segment (where the token lives) cut, and kept short. Trailing
    slashes do not count as segments: `check` ignores them too, so '/hooks/KEY/TOKEN/' is a poke."""
    head, slash, _ = path.rstrip("/").rpartition("/")
    return (head + slash + "…")[:120] if slash else "…"


def path_of(target: bytes) -> str:
    """The path of a request target: origin form '/a/b?q' or absolute form 'http://h/a/b?q'."""
    text = target.decode("ascii", "replace")  # h11 lets only visible ASCII through
    if not text.startswith("/") and "://" in text:
        after_scheme = text.partition("://")[2]
        text = "/" + after_scheme.partition("/")[2]
    return text.partition("?")[0].partition("#")[0]


def declared_length(request: h11.Request) -> int | None:
    """The request's Content-Length (h11 has checked it is one bounded number), or None."""
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)
    return None


class PokeListener:
    """Serves webhook pokes on one address until cancelled; see the module's docstring."""

    def __init__(self, host: str, port: int, check: Callable[[str], str | None], poke: Callable[[str], None],
                 limits: ListenerLimits = ListenerLimits()) -> None:
        self.host, self.port = host, port
        self.check, self.poke, self.limits = check, poke, limits
        self.counts = ListenerCounts()
        self.open_connections = 0

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the bound port through task_status.started(port), serve until cancelled."""
        listener = await self._bind()
        async with listener:
            port: int = listener.extra(SocketAttribute.local_port)
            log.info("webhook listener on %s", format_listen(self.host, port))
            task_status.started(port)
            try:
                async with anyio.create_task_group() as group:
                    for one in listener.listeners:
                        if isinstance(one, anyio.abc.SocketListener):
                            group.start_soon(self._accept, one, group)
            finally:
                log.info("webhook listener on %s stopped: %s", format_listen(self.host, port), asdict(self.counts))

    async def _bind(self) -> MultiListener[anyio.abc.SocketStream]:
        address = format_listen(self.host, self.port)
        try:
            return await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        except OSError as exc:
            raise UsageError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        except ValueError as exc:  # a scope id anyio cannot read, say
            raise UsageError(f"cannot listen on {address}: {exc}") from None

    async def _accept(self, listener: anyio.abc.SocketListener, group: anyio.abc.TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # out of file descriptors, a connection aborted before accept
                log.warning("webhook listener: accept failed (%s); going on", exc.strerror or exc)
                await anyio.sleep(ACCEPT_PAUSE)
                continue
            if self.open_connections >= self.limits.max_connections:
                self.counts.refused_busy += 1
                await stream.aclose()
                continue
            self.open_connections += 1
            group.start_soon(self._converse, stream)

    async def _converse(self, stream: anyio.abc.SocketStream) -> None:
        """Requests on one connection, one after another, until either side closes."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        try:
            async with stream:
                first = True
                while await self._exchange(conn, stream, first=first):
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return  # either side asked to close (Connection: close, HTTP/1.0)
                    conn.start_next_cycle()
                    first = False
                if conn.their_state in (h11.SEND_BODY, h11.ERROR) and conn.our_state in (h11.DONE, h11.MUST_CLOSE):
                    await self._linger(stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the client went away: nothing to answer
        except Exception:  # one connection's failure must not end the listener
            log.warning("webhook listener: a connection failed", exc_info=True)
        finally:
            self.open_connections -= 1

    async def _linger(self, stream: anyio.abc.SocketStream) -> None:
        """Answered with the client still sending: stop writing and read on a moment (bounded), so
        closing does not reset the connection before the client has read the answer."""
        with anyio.move_on_after(min(self.limits.read_timeout, LINGER_TIME)):
            try:
                await stream.send_eof()
                for _ in range(LINGER_BYTES // RECEIVE_SIZE):
                    await stream.receive(RECEIVE_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def _exchange(self, conn: h11.Connection, stream: anyio.abc.SocketStream, *, first: bool) -> bool:
        """One request and its answer; True when the connection may carry another."""
        with anyio.move_on_after(self.limits.read_timeout) as deadline:
            try:
                return await self._answer(conn, stream, deadline)
            except h11.RemoteProtocolError as exc:
                self.counts.bad_request += 1
                status = 431 if exc.error_status_hint == 431 else 400
                # not h11's words: they quote the request line, token and all
                log.debug("webhook listener: malformed request, answered %s", status)
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._reply(conn, stream, status, close=True)
                return False
        started = conn.their_state is not h11.IDLE or bool(conn.trailing_data[0])
        if first or started:  # an idle keep-alive connection closing is not a slow client
            self.counts.timed_out += 1
        return False

    async def _answer(self, conn: h11.Connection, stream: anyio.abc.SocketStream, deadline: anyio.CancelScope) -> bool:
        event = await self._next_event(conn, stream)
        if not isinstance(event, h11.Request):
            return False  # the client closed between requests
        path = path_of(event.target)
        head = event.method == b"HEAD"
        try:
            key = self.check(path) if event.method == b"POST" else None
        except Exception:
            return await self._fail(conn, stream, "check", path, keep=False)
        if key is None:
            return await self._refuse(conn, stream, event, path, head=head)
        length = declared_length(event)
        if length is not None and length > self.limits.max_body:
            self.counts.too_large += 1
            await self._reply(conn, stream, 413, close=True)
            return False
        if conn.they_are_waiting_for_100_continue:
            await stream.send(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        if not await self._discard_body(conn, stream):
            self.counts.too_large += 1
            await self._reply(conn, stream, 413, close=True)
            return False
        deadline.deadline = anyio.current_time() + self.limits.read_timeout  # arrived whole: time to answer
        try:
            self.poke(key)
        except Exception:
            return await self._fail(conn, stream, "poke", path, keep=True)
        self.counts.accepted += 1
        log.debug("webhook poke %s", redact(path))
        await self._reply(conn, stream, 200, body=OK_BODY)
        return True

    async def _refuse(self, conn: h11.Connection, stream: anyio.abc.SocketStream, request: h11.Request, path: str,
                      *, head: bool) -> bool:
        """404 at once; then the body is thrown away (bounded) so the connection can go on, or the
        connection closes when the body is not worth waiting for."""
        self.counts.not_found += 1
        log.debug("webhook 404 %s %s", request.method.decode("ascii", "replace"), redact(path))
        length = declared_length(request)
        close = conn.they_are_waiting_for_100_continue or (length is not None and length > self.limits.max_body)
        await self._reply(conn, stream, 404, close=close, head=head)
        return not close and await self._discard_body(conn, stream)

    async def _fail(self, conn: h11.Connection, stream: anyio.abc.SocketStream, stage: str, path: str,
                    *, keep: bool) -> bool:
        """A check or poke raised: logged (the traceback at debug level only: it may quote the path), 500."""
        self.counts.failed += 1
        log.error("webhook listener: %s raised on %s; answered 500", stage, redact(path))
        log.debug("webhook listener: %s failure", stage, exc_info=True)
        await self._reply(conn, stream, 500, close=not keep)
        return keep

    async def _discard_body(self, conn: h11.Connection, stream: anyio.abc.SocketStream) -> bool:
        """Read the request body to its end and throw it away; False when it runs over max_body."""
        seen = 0
        while True:
            event = await self._next_event(conn, stream)
            if isinstance(event, h11.Data):
                seen += len(event.data)
                if seen > self.limits.max_body:
                    return False
            else:  # EndOfMessage; h11 raises on a close mid-body
                return isinstance(event, h11.EndOfMessage)

    async def _next_event(self, conn: h11.Connection, stream: anyio.abc.SocketStream) -> object:
        """The next h11 event, reading from the socket as h11 needs."""
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await stream.receive(RECEIVE_SIZE)
            except anyio.EndOfStream:
                data = b""
            conn.receive_data(data)

    async def _reply(self, conn: h11.Connection, stream: anyio.abc.SocketStream, status: int, *,
                     body: bytes | None = None, close: bool = False, head: bool = False) -> None:
        """A small JSON answer; `close` says so in the answer (h11 then ends the connection)."""
        body = ERROR_BODIES.get(status, b"{}") if body is None else body
        sent = b"" if head else body  # an answer to HEAD carries no body
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(sent)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        parts = [conn.send(h11.Response(status_code=status, headers=headers))]
        if sent:
            parts.append(conn.send(h11.Data(data=sent)))
        parts.append(conn.send(h11.EndOfMessage()))
        await stream.send(b"".join(part for part in parts if part))
