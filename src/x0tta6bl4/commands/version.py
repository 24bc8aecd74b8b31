"""``x0tta6bl4 version``."""

from __future__ import annotations

import json
import platform
from typing import Annotated

import typer


def version(
    as_json: Annotated[
        bool, typer.Option("--json", envvar="X0_JSON", help="Print the versions as JSON.")
    ] = False,
) -> None:
    """Print the version of x0tta6bl4, Python and the OpenSSL behind pyca/cryptography."""
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    from x0tta6bl4 import __version__

    info = {
        "x0tta6bl4": __version__,
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
    }
    if as_json:
        typer.echo(json.dumps(info))
    else:
        typer.echo(f"x0tta6bl4 {__version__}")
        typer.echo(
            f"python {info['python']}, cryptography {info['cryptography']}, {info['openssl']}"
        )


__all__ = ["version"]
