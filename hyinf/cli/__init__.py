"""The `hyinf` command. Thin: each command parses options, calls the library, writes files, and turns
hyinf's own errors into one line on stderr with a non-zero exit."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any

import click

import hyinf


class _OneLineErrors(click.Group):
    """click, except that a malformed command line is reported in one line, as every other error is."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            self._standalone(args, prog_name, complete_var, **extra)
        except SystemExit as e:
            if args is None:  # the `hyinf` process itself, not a caller in Python (tests, the daemon)
                _leave(e.code)
            raise

    def _standalone(self, args: Any, prog_name: str | None, complete_var: str | None, **extra: Any) -> None:
        """Run the command line; always ends in SystemExit."""
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


def _leave(code: Any) -> None:
    """End the process with `code` without the interpreter's teardown of every object it holds (about a
    second once torch models ran, as long as a small explanation's planning), once output is flushed
    and exit handlers have run; where another thread still works, or the code is a message, the usual
    exit follows instead."""
    if not (code is None or isinstance(code, int)) or any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


@click.group(cls=_OneLineErrors)
@click.version_option(hyinf.__version__, prog_name="hyinf")
def main() -> None:
    """hyinf: fast, exact occlusion-based explanations of CNN predictions."""


from hyinf.cli import daemon, db, explain, plan, profile, serve  # noqa: E402,F401  (commands register on main)
