"""The `hyinf` command. Thin: each command parses options, calls the library, writes files, and turns
hyinf's own errors into one line on stderr with a non-zero exit."""

from __future__ import annotations

import sys
from typing import Any

import click

import hyinf


class _OneLineErrors(click.Group):
    """click, except that a malformed command line is reported in one line, as every other error is."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        if argv[:1] == ["explain"] and "obj" not in extra and not {"--ray", "--help"} & set(argv):
            from hyinf.cli.common import process_age
            from hyinf.daemon import hand_over

            handed = hand_over(argv, process_age() or 0.0)  # a running `hyinf daemon` explains with everything loaded
            if handed is not None:
                sys.exit(handed)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.Abort:
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        except click.ClickException as e:
            hint = f" (see '{e.ctx.command_path} --help')" if isinstance(e, click.UsageError) and e.ctx is not None else ""
            message = " ".join(e.format_message().split())  # click's messages may span lines
            click.echo(f"Error: {message}{hint}", err=True)
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_OneLineErrors)
@click.version_option(hyinf.__version__, prog_name="hyinf")
def main() -> None:
    """hyinf: fast, exact occlusion-based explanations of CNN predictions."""


from hyinf.cli import daemon, db, explain, plan, profile, serve  # noqa: E402,F401  (commands register on main)
