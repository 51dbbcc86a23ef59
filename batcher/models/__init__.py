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

__getattr__ = lazy(__name__)

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
