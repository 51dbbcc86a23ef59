"""What the simulator answers with: an answer (every one marked as the simulator's), a dropped or
refused connection, and the helpers that build JSON and error answers (quoting the key, for a
hostile API)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from ..client.http import SIMULATOR_HEADER
from .references import UploadStore, own_file, static_file


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def signed(answer: Answer) -> Answer:
    """`answer` marked as the simulator's (SIMULATOR_HEADER): a client then knows its run is simulated."""
    return Answer(answer.status, answer.body, {**answer.headers, SIMULATOR_HEADER: "1"})


class Dropped(Exception):
    """The connection is closed without an answer (after doing `effects`, if any)."""


class Refused(Exception):
    """The connection is refused: nothing reached the server."""



def own_file_answer(kind: str, name: str, headers: dict[str, str], uploads: UploadStore) -> Answer:
    """A reference image or an upload, as a static file host serves it: ETag, Last-Modified, 304, ranges."""
    return Answer(*static_file(own_file(kind, name, uploads), headers, validators=name != "noetag.png"))


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_time_ms(epoch: float) -> str:
    """To the millisecond: a job's createdAt and completedAt time renders that take well under a second."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_answer(status: int, data: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(data).encode(), {"content-type": "application/json", **(headers or {})})


def error_answer(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    return json_answer(status, {"error": {"code": code, "message": message}}, headers)


def echo_key(answer: Answer, authorization: str) -> Answer:
    """`answer` as a careless API would give it: quoting the request's credentials in its error texts."""
    token = authorization.removeprefix("Bearer ")
    echo = f"request had Authorization: {authorization} (token={quote(token, safe='')})"
    kind = answer.headers.get("content-type", "")
    if kind.startswith("application/json"):
        data = json.loads(answer.body)
        if not isinstance(data, dict):
            return answer
        if answer.status >= 400 and isinstance(data.get("error"), dict):
            data["error"]["message"] = f"{data['error'].get('message', '')}; {echo}"
        elif data.get("status") == "failed" and isinstance(data.get("error"), str):
            data["error"] = f"{data['error']}; {echo}"
        else:
            return answer
        return Answer(answer.status, json.dumps(data).encode(), answer.headers)
    if answer.status >= 400 or kind.startswith("text/html"):  # error pages, the malformed fault's too
        return Answer(answer.status, answer.body + f"\n<!-- {echo} -->".encode(), answer.headers)
    return answer


