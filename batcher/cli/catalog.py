"""Models: what the API offers, and one model's parameters, defaults and price."""

from __future__ import annotations

import json
from typing import Any

import click

from ..money import json_safe
from . import cli, ledger_for, ledger_option


@cli.command()
@click.argument("api_id", required=False)
@ledger_option
@click.option("--refresh", is_flag=True, help="Fetch the model's description again, even if the ledger has it.")
@click.option("--simulate", is_flag=True, help="Ask the built-in simulator instead of the API.")
@click.option("--api-base", envvar="PIXELDOJO_API_BASE", default=None,
              help="API base URL (or PIXELDOJO_API_BASE); default https://pixeldojo.ai.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: the list, or the model's description.")
def models(api_id: str | None, ledger_path: str, refresh: bool, simulate: bool, api_base: str | None,
           as_json: bool) -> None:
    """List the models the API offers, or show one (APIID): its parameters, defaults and price."""
    import anyio

    from .. import api
    from ..ledger import Ledger
    from ..views import model_lines, model_list_lines
    ledger_path = ledger_for(ledger_path, simulate)
    import re
    if api_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", api_id):
        raise click.UsageError(f"{api_id[:60]!r} is not a model id (letters, digits, '.', '_' and '-')")
    to = api.target(simulate=simulate, api_base=api_base)
    if api_id is None:
        listed = anyio.run(lambda: api.list_models(to))
        if as_json:
            click.echo(json.dumps(json_safe(listed), indent=2, allow_nan=False))
            return
        for line in model_list_lines(listed):
            click.echo(line)
        return
    with Ledger(ledger_path) as ledger:
        spec, description = anyio.run(lambda: api.describe_model(api_id, ledger, to, refresh=refresh))
    if as_json:
        data: dict[str, Any] = {"apiId": spec.api_id, "source": spec.source, **description}
        click.echo(json.dumps(json_safe(data), indent=2, allow_nan=False))
        return
    for line in model_lines(spec, description.get("requestSchema") or spec.json_schema()):
        click.echo(line)
