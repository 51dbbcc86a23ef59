"""A faithful fake of the PixelDojo API (`--simulate`, tests, demos), served as an httpx transport
or over HTTP.

    images      reference images it serves, valid or made to be refused
    references  each reference URL of a submission judged as the API would; uploaded images
    models      the models it serves: listing, request schema, strict check, price
    webhooks    webhook deliveries: at least once, late, lost or twice, retried, replayed
    server      the simulator: its state and configuration, the transport, the HTTP server
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .images import png_image
    from .models import WAN_T2V_SCHEMA, served_models
    from .references import FetchedReference, UploadStore, submission_problem
    from .server import (
        Dropped,
        Journal,
        Refused,
        SimConfig,
        Simulator,
        SimulatorTransport,
        clip_for,
        demo_clip,
        make_server,
    )

_WHERE = {
    "png_image": "images",
    "FetchedReference": "references", "UploadStore": "references", "submission_problem": "references",
    "WAN_T2V_SCHEMA": "models", "served_models": "models",
    "Dropped": "server", "Journal": "server", "Refused": "server", "SimConfig": "server", "Simulator": "server",
    "SimulatorTransport": "server", "clip_for": "server", "demo_clip": "server", "make_server": "server",
}
__getattr__ = lazy(__name__, _WHERE)

__all__ = [
    "WAN_T2V_SCHEMA",
    "Dropped",
    "FetchedReference",
    "Journal",
    "Refused",
    "SimConfig",
    "Simulator",
    "SimulatorTransport",
    "UploadStore",
    "clip_for",
    "demo_clip",
    "make_server",
    "png_image",
    "served_models",
    "submission_problem",
]
