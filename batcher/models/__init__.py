"""Models: what batcher knows of each PixelDojo model, from its own tables or from what the API
publishes about it.

    patterns    which regular expressions from outside batcher will run
    schema      a live JSON schema's rules: what a value breaks, names, parameters for people
    tables      the built-in per-model parameter tables and prices
    live        a model without a table, described from its request schema and info
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .live import described, needs_description, price_of, wanted_descriptions
    from .patterns import backtracks
    from .schema import (
        MAX_DEPTH,
        WEB_FORMATS,
        ParameterFacts,
        Violation,
        check_against,
        describe_parameters,
        manifest_name,
        path_text,
        suggest,
        wire_name,
    )
    from .tables import (
        DEFAULT_MODEL,
        HAPPYHORSE_11_R2V,
        HAPPYHORSE_R2V,
        MAX_INT32,
        MODELS,
        ROW_WORDS,
        ModelSpec,
        Param,
        check_rates,
        check_url,
        get_model,
        unpriced,
    )

_WHERE = {
    "backtracks": "patterns",
    "MAX_DEPTH": "schema", "ParameterFacts": "schema", "Violation": "schema", "WEB_FORMATS": "schema",
    "check_against": "schema", "describe_parameters": "schema", "manifest_name": "schema", "path_text": "schema",
    "suggest": "schema", "wire_name": "schema",
    "DEFAULT_MODEL": "tables", "HAPPYHORSE_11_R2V": "tables", "HAPPYHORSE_R2V": "tables", "MAX_INT32": "tables",
    "MODELS": "tables", "ModelSpec": "tables", "Param": "tables", "ROW_WORDS": "tables", "check_rates": "tables",
    "check_url": "tables", "get_model": "tables", "unpriced": "tables",
    "described": "live", "needs_description": "live", "price_of": "live", "wanted_descriptions": "live",
}
__getattr__ = lazy(__name__, _WHERE)

__all__ = [
    "DEFAULT_MODEL",
    "HAPPYHORSE_11_R2V",
    "HAPPYHORSE_R2V",
    "MAX_DEPTH",
    "MAX_INT32",
    "MODELS",
    "ROW_WORDS",
    "WEB_FORMATS",
    "ModelSpec",
    "Param",
    "ParameterFacts",
    "Violation",
    "backtracks",
    "check_against",
    "check_rates",
    "check_url",
    "describe_parameters",
    "described",
    "get_model",
    "manifest_name",
    "needs_description",
    "path_text",
    "price_of",
    "suggest",
    "unpriced",
    "wanted_descriptions",
    "wire_name",
]
