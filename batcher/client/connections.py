"""How the API client's HTTP connections are made: one pool a client, one TLS context a
process, no cookie jar."""

from __future__ import annotations

import functools
import ssl

import httpx


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        return None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings every client of this process shares (httpx's own default: certifi's
    authorities, or SSL_CERT_FILE / SSL_CERT_DIR): loading them takes some 50 ms, once, not once
    per client (a run makes two)."""
    return httpx.create_ssl_context()


def http_client(transport: httpx.AsyncBaseTransport | None, timeout: float) -> httpx.AsyncClient:
    """An httpx client for the API (`transport`: another than the network's, e.g. the in-process
    simulator's): up to 100 connections, no redirects followed, no cookies kept."""
    client = httpx.AsyncClient(
        transport=transport, verify=tls_context() if transport is None else True,
        timeout=httpx.Timeout(timeout, connect=10.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
        headers={"user-agent": "batcher"}, follow_redirects=False)
    # The API sets no cookies: skip httpx's per-response cookie parsing (costly at hundreds of requests a second).
    if isinstance(getattr(client, "_cookies", None), httpx.Cookies):
        client._cookies = _NoCookies()
    return client
