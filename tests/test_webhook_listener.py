"""The webhook listener over real sockets on 127.0.0.1: valid pokes, 404s that cost nothing, body and
head limits, keep-alive, malformed requests, slow clients cut off while others are served, the
connection cap, port 0, bind errors, and parse_listen."""
from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest

from batcher.errors import UsageError
from batcher.run.listener import ListenerLimits, PokeListener
from batcher.run.webhooks import parse_listen

GOOD = "/hooks/job-1/s3cr3t-token"
FAST = ListenerLimits(max_body=4096, max_head=2048, read_timeout=0.3, max_connections=8)
GUARD = 5.0  # seconds before a test gives up waiting (a hang guard, not a speed assertion)


def check(path: str) -> str | None:
    return "job-1" if path == GOOD else None


class Served:
    def __init__(self, listener: PokeListener, port: int, pokes: list[str]) -> None:
        self.listener, self.port, self.pokes = listener, port, pokes
        self.url = f"http://127.0.0.1:{port}"

    async def connect(self) -> anyio.abc.SocketStream:
        return await anyio.connect_tcp("127.0.0.1", self.port)


@asynccontextmanager
async def serving(limits: ListenerLimits = FAST, check: Callable[[str], str | None] = check,
                  poke: Callable[[str], None] | None = None) -> AsyncIterator[Served]:
    pokes: list[str] = []
    listener = PokeListener("127.0.0.1", 0, check, poke or pokes.append, limits)
    async with anyio.create_task_group() as group:
        port = await group.start(listener.serve)
        yield Served(listener, port, pokes)
        group.cancel_scope.cancel()


def run(test) -> None:
    anyio.run(test)


async def receive_until_closed(stream: anyio.abc.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with anyio.fail_after(GUARD):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return data


async def receive_until(stream: anyio.abc.SocketStream, marker: bytes, count: int = 1) -> bytes:
    data = b""
    with anyio.fail_after(GUARD):
        while data.count(marker) < count:
            data += await stream.receive()
    return data


def post(path: str = GOOD, body: bytes = b"{}", extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def test_a_valid_path_pokes_its_key_and_answers_ok():
    async def body():
        async with serving() as s, httpx.AsyncClient() as client:
            answer = await client.post(s.url + GOOD + "?ignored=1", content=b'{"status":"completed"}')
            assert answer.status_code == 200
            assert answer.json() == {"ok": True}
            assert answer.headers["content-type"] == "application/json"
            assert s.pokes == ["job-1"]
            assert s.listener.counts.accepted == 1
    run(body)


def test_a_bad_path_or_method_is_404_and_pokes_nothing():
    async def body():
        async with serving() as s, httpx.AsyncClient() as client:
            wrong_token = await client.post(s.url + "/hooks/job-1/guessed", content=b"{}")
            get = await client.get(s.url + GOOD)
            head = await client.head(s.url + GOOD)
            put = await client.put(s.url + GOOD, content=b"x" * 100)
            assert [a.status_code for a in (wrong_token, get, head, put)] == [404] * 4
            assert head.content == b""
            assert s.pokes == []
            assert s.listener.counts.not_found == 4
            # the connection carried on after each 404 (the body was thrown away)
            assert (await client.post(s.url + GOOD)).status_code == 200
            assert s.pokes == ["job-1"]
    run(body)


def test_a_declared_body_over_the_limit_is_413_without_reading_it():
    async def body():
        async with serving() as s, httpx.AsyncClient() as client:
            answer = await client.post(s.url + GOOD, content=b"x" * 10_000)
            assert answer.status_code == 413
            stream = await s.connect()
            # a billion bytes declared, none sent: answered at once, not left to time out
            await stream.send(post().replace(b"Content-Length: 2", b"Content-Length: 1000000000"))
            reply = await receive_until_closed(stream)
            assert reply.startswith(b"HTTP/1.1 413 ")
            assert s.pokes == []
            assert s.listener.counts.too_large == 2
            assert s.listener.counts.timed_out == 0
    run(body)


def test_a_chunked_body_over_the_limit_is_413_and_closed():
    async def body():
        async with serving() as s:
            stream = await s.connect()
            await stream.send(b"POST " + GOOD.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
            try:
                for _ in range(8):  # 8 KiB against a 4 KiB limit
                    await stream.send(chunk)
            except anyio.BrokenResourceError:
                pass  # the server may close before the last chunks
            reply = await receive_until_closed(stream)
            assert reply.startswith(b"HTTP/1.1 413 ")
            assert s.pokes == []
            assert s.listener.counts.too_large == 1
    run(body)


def test_a_chunked_body_within_the_limit_pokes():
    async def body():
        async with serving() as s, httpx.AsyncClient() as client:
            async def chunks():
                yield b'{"id":'
                yield b'"job-1"}'
            answer = await client.post(s.url + GOOD, content=chunks())
            assert answer.status_code == 200
            assert s.pokes == ["job-1"]
    run(body)


def test_two_requests_on_one_keep_alive_connection_are_both_served():
    async def body():
        async with serving() as s:
            stream = await s.connect()
            await stream.send(post())
            first = await receive_until(stream, b'{"ok":true}')
            await stream.send(post(body=b"second"))
            both = first + await receive_until(stream, b'{"ok":true}')
            # and two pipelined at once, the last asking to close
            await stream.send(post() + post(extra=b"Connection: close\r\n"))
            rest = await receive_until_closed(stream)
            assert both.count(b"HTTP/1.1 200 ") == 2
            assert rest.count(b"HTTP/1.1 200 ") == 2
            assert s.pokes == ["job-1"] * 4
            assert s.listener.counts.timed_out == 0
    run(body)


def test_an_idle_keep_alive_connection_is_closed_after_the_read_timeout():
    async def body():
        async with serving() as s:
            stream = await s.connect()
            await stream.send(post())
            await receive_until(stream, b'{"ok":true}')
            assert await receive_until_closed(stream) == b""
            assert s.listener.counts.timed_out == 0  # an idle connection is not a slow client
    run(body)


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"POST /hooks/job-1/s3cr3t-token HTTP/1.1\r\nHost: x\r\nContent-Length: nine\r\n\r\n",
    b"POST /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /hooks/job-1/s3cr3t-token HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
])
def test_a_malformed_request_is_400_and_closed(request_bytes):
    async def body():
        async with serving() as s:
            stream = await s.connect()
            await stream.send(request_bytes)
            reply = await receive_until_closed(stream)
            assert reply.startswith(b"HTTP/1.1 400 ")
            assert s.listener.counts.bad_request == 1
            assert s.pokes == []
    run(body)


def test_a_head_over_the_limit_is_431_and_closed():
    async def body():
        async with serving() as s:
            stream = await s.connect()
            await stream.send(b"POST " + GOOD.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 8000)
            reply = await receive_until_closed(stream)
            assert reply.startswith(b"HTTP/1.1 431 ")
            assert s.listener.counts.bad_request == 1
    run(body)


@pytest.mark.parametrize("half", [
    b"POST /hooks/job-1/s3cr3t-token HTTP/1.1\r\nHost: x\r\n",  # a head that never ends
    post(body=b"0123456789")[:-7],  # a body that never ends
    b"",  # connected, then silent
])
def test_a_slow_client_is_cut_off_while_another_is_served(half):
    async def body():
        async with serving() as s, httpx.AsyncClient() as client:
            slow = await s.connect()
            if half:
                await slow.send(half)
            answer = await client.post(s.url + GOOD)
            assert answer.status_code == 200
            assert await receive_until_closed(slow) == b""  # closed without an answer
            assert s.listener.counts.timed_out == 1
            assert s.pokes == ["job-1"]
    run(body)


def test_connections_over_the_cap_are_closed_at_once():
    async def body():
        limits = ListenerLimits(max_body=4096, max_head=2048, read_timeout=GUARD, max_connections=2)
        async with serving(limits) as s:
            held = [await s.connect(), await s.connect()]
            with anyio.fail_after(GUARD):
                while s.listener.open_connections < 2:
                    await anyio.sleep(0.01)
            extra = await s.connect()
            await extra.send(post())
            assert await receive_until_closed(extra) == b""
            assert s.listener.counts.refused_busy == 1
            await held[0].aclose()
            with anyio.fail_after(GUARD):
                while s.listener.open_connections > 1:
                    await anyio.sleep(0.01)
            async with httpx.AsyncClient() as client:
                assert (await client.post(s.url + GOOD)).status_code == 200
            assert s.pokes == ["job-1"]
    run(body)


def test_failing_check_or_poke_answers_500_without_a_traceback_and_the_listener_goes_on(caplog):
    def fragile_check(path: str) -> str | None:
        if path.endswith("/explode"):
            raise RuntimeError("check broke on " + path)
        return check(path)

    pokes: list[str] = []

    def fragile_poke(key: str) -> None:
        if len(pokes) == 0:
            pokes.append("failed")
            raise RuntimeError("poke broke")
        pokes.append(key)

    async def body():
        async with serving(check=fragile_check, poke=fragile_poke) as s, httpx.AsyncClient() as client:
            exploded = await client.post(s.url + "/hooks/job-1/explode")
            poke_failed = await client.post(s.url + GOOD)
            fine = await client.post(s.url + GOOD)
            assert [a.status_code for a in (exploded, poke_failed, fine)] == [500, 500, 200]
            assert b"Traceback" not in exploded.content and b"broke" not in exploded.content
            assert b"broke" not in poke_failed.content
            assert s.listener.counts.failed == 2
            assert pokes == ["failed", "job-1"]
    with caplog.at_level(logging.INFO, logger="batcher"):
        run(body)
    assert "explode" not in caplog.text  # the path's last segment is never logged
    assert "raised" in caplog.text


def test_paths_are_never_logged_whole(caplog):
    async def body():
        async with serving() as s, httpx.AsyncClient() as client:
            await client.post(s.url + GOOD)
            await client.post(s.url + "/hooks/job-1/guessed")
    with caplog.at_level(logging.DEBUG, logger="batcher"):
        run(body)
    assert "s3cr3t-token" not in caplog.text and "guessed" not in caplog.text
    assert "/hooks/job-1/…" in caplog.text


def test_expect_100_continue_is_answered_before_the_body():
    async def body():
        async with serving() as s:
            stream = await s.connect()
            head = post(body=b"hello", extra=b"Expect: 100-continue\r\n")[:-5]
            await stream.send(head)
            assert (await receive_until(stream, b"\r\n\r\n")).startswith(b"HTTP/1.1 100 ")
            await stream.send(b"hello")
            assert (await receive_until(stream, b'{"ok":true}')).startswith(b"HTTP/1.1 200 ")
            assert s.pokes == ["job-1"]
    run(body)


def test_an_absolute_form_target_is_read_by_its_path():
    async def body():
        async with serving() as s:
            stream = await s.connect()
            await stream.send(post(path="http://public.example" + GOOD + "?x=1"))
            assert (await receive_until(stream, b'{"ok":true}')).startswith(b"HTTP/1.1 200 ")
            assert s.pokes == ["job-1"]
    run(body)


def test_port_zero_reports_the_real_port():
    async def body():
        async with serving() as s, httpx.AsyncClient() as client:
            assert 0 < s.port < 65536
            assert (await client.post(f"http://127.0.0.1:{s.port}{GOOD}")).status_code == 200
    run(body)


def test_binding_a_port_in_use_is_a_usage_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = PokeListener("127.0.0.1", port, check, lambda key: None)
        with pytest.raises(UsageError) as error:
            anyio.run(listener.serve)
    assert f"127.0.0.1:{port}" in str(error.value)
    assert "\n" not in str(error.value)


def test_binding_an_address_not_on_this_machine_is_a_usage_error():
    listener = PokeListener("192.0.2.1", 0, check, lambda key: None)  # TEST-NET-1: never local
    with pytest.raises(UsageError, match=r"cannot listen on 192\.0\.2\.1:0"):
        anyio.run(listener.serve)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8787", ("127.0.0.1", 8787)),
    ("localhost:0", ("localhost", 0)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ("[::1]:8787", ("::1", 8787)),
    ("[::]:80", ("::", 80)),
    (" 127.0.0.1:1 ", ("127.0.0.1", 1)),
])
def test_parse_listen_reads_good_addresses(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("127.0.0.1", "no port"),
    ("[::1]", "no port"),
    ("127.0.0.1:", "port must be"),
    (":8787", "no host"),
    ("127.0.0.1:65536", "port must be"),
    ("127.0.0.1:-1", "port must be"),
    ("127.0.0.1:\uff18\uff10", "port must be"),  # fullwidth digits
    ("::1:8787", "brackets"),
    ("[::1:8787", "closing"),
    ("[not-ipv6]:8787", "not an IPv6 address"),
    ("exa mple:80", "not a host name"),
    ("\x1b[31m:80", "not a host name"),
    ("", "no port"),
])
def test_parse_listen_refuses_bad_addresses_in_one_line(text, why):
    with pytest.raises(UsageError, match=why) as error:
        parse_listen(text)
    assert "\n" not in str(error.value) and "\x1b" not in str(error.value)


def test_an_early_413_reaches_a_client_still_sending_and_ends_in_a_clean_close():
    """Answered before the body was read, the client's bytes still arriving: the listener stops
    writing and reads on a moment (bounded), so the client reads the answer and then an orderly
    end, not a connection reset that may take the answer with it."""
    async def body():
        async with serving() as s:
            stream = await s.connect()
            await stream.send(post(body=b"x" * 200_000))
            await anyio.sleep(0.1)  # a client busy elsewhere: the listener has answered by now
            reply = b""
            with anyio.fail_after(GUARD):
                try:
                    while True:
                        reply += await stream.receive()
                except anyio.EndOfStream:
                    pass  # a reset would raise BrokenResourceError and fail the test
            assert reply.startswith(b"HTTP/1.1 413 ")
            assert s.pokes == []
    run(body)
