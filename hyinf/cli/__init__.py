"""The `hyinf` command. Thin: each command parses options, calls the library, writes files, and turns
hyinf's own errors into one line on stderr with a non-zero exit."""

from __future__ import annotations

import click

import hyinf


@click.group()
@click.version_option(hyinf.__version__, prog_name="hyinf")
def main() -> None:
    """hyinf: fast, exact occlusion-based explanations of CNN predictions."""


from hyinf.cli import db, explain, plan, profile  # noqa: E402,F401  (commands register on main)
