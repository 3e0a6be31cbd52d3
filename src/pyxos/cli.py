"""The ``pyxos`` command. It only builds configurations and calls the layers below."""

from __future__ import annotations

import click

from pyxos import __version__


@click.group()
@click.version_option(__version__, prog_name="pyxos")
def main() -> None:
    """pyxos: Paxos consensus for Python."""
