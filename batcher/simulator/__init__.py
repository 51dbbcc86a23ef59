"""A faithful fake of the PixelDojo API (`--simulate`, tests, demos), served as an httpx transport
or over HTTP.

    images      reference images it serves, valid or made to be refused
    references  each reference URL of a submission judged as the API would; uploaded images
    models      the models it serves: listing, request schema, strict check, price
    webhooks    webhook deliveries: at least once, late, lost or twice, retried, replayed
    config      what can be tuned or broken; its record of a job
    wire        what it answers with: answers, dropped and refused connections, the demo clip
    jobs        a job checked, charged, rendered, asked after; its output and its webhook
    server      the simulator: its state, routes, faults and request-rate limit
    journal     what it charged and handed out, kept between runs
    transport   served in-process to httpx, or over HTTP on a socket
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .clips import ClipLie, clip_for, demo_clip
    from .config import SimConfig
    from .images import png_image
    from .journal import Journal
    from .models import WAN_T2V_SCHEMA, served_models
    from .references import FetchedReference, UploadStore, submission_problem
    from .server import Simulator
    from .transport import SimulatorTransport, make_server
    from .wire import Dropped, Refused

__getattr__ = lazy(__name__)

__all__ = [
    "WAN_T2V_SCHEMA",
    "ClipLie",
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
