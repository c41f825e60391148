"""What every command shares: one-line user errors and warnings, option parsing."""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hyinf.errors import HyinfError, PlanWarning

REGISTRY_HELP = "Plans service URL (`hyinf serve`; default: $HYINF_REGISTRY), with the token in $HYINF_TOKEN."
DB_HELP = "Database URL or SQLite file (default: $HYINF_DB or the user data directory)."


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """hyinf's own errors become one line and a non-zero exit; plan warnings one line each."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", PlanWarning)
                return fn(*args, **kwargs)
        except HyinfError as e:
            raise click.ClickException(str(e)) from e
        except OSError as e:  # the disk, not hyinf: full, read-only, gone
            where = f" {e.filename}" if e.filename else " a file"
            raise click.ClickException(f"cannot write or read{where}: {e.strerror or e}") from e
        finally:  # outside the recording context, so re-issued warnings are not recorded again
            for w in caught:
                if issubclass(w.category, PlanWarning):
                    click.echo(f"warning: {w.message}", err=True)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    return wrapper


def process_age() -> float | None:
    """Seconds since this process started (Linux), or None where the system does not say."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


class Laps:
    """Named durations of a command's steps; `startup_s` is the interpreter's start to the command
    (Python, click and hyinf's CLI loading), where the system tells the process's age."""

    def __init__(self, startup_s: float | None = None) -> None:
        """`startup_s`: the process's start where another process runs the command (`hyinf daemon`)."""
        self.times: dict[str, float] = {"startup_s": startup_s if startup_s is not None else process_age() or 0.0}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = now - self._last
        self._last = now


def pair(value: str) -> int | tuple[int, int]:
    """'16' -> 16, '16x8' -> (16, 8)."""
    try:
        parts = [int(p) for p in value.lower().split("x")]
    except ValueError:
        raise click.BadParameter(f"expected N or HxW, got {value!r}") from None
    if len(parts) not in (1, 2):
        raise click.BadParameter(f"expected N or HxW, got {value!r}")
    if min(parts) < 1:
        raise click.BadParameter(f"sizes are at least 1 pixel, got {value!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def pair_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | tuple[int, int] | None:
    """A click callback: N or HxW parsed while the command line is, before any work."""
    return None if value is None else pair(value)


def writable_file(path: Path | None) -> None:
    """Refuse, before any work, an output file whose folder does not exist or that is a folder."""
    if path is None:
        return
    if path.is_dir():
        raise click.BadParameter(f"{path} is a directory; give a file name", param_hint="-o")
    if not path.parent.is_dir():
        raise click.BadParameter(f"the folder {path.parent} does not exist; create it first", param_hint="-o")


def writable_folder(path: Path) -> None:
    """Refuse, before any work, an output folder that cannot be created or written (nothing is created now)."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise click.BadParameter(f"{existing} is a file, so {path} cannot be a folder", param_hint="--out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{existing} cannot be written to", param_hint="--out")


def finite(value: float | None, name: str) -> None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}", param_hint=name)


def publishing_registry(publish: bool, url: str | None) -> Any:
    """The registry a command publishes to (None without --publish), checked before any long work."""
    if not publish:
        return None
    from hyinf.registry import Registry

    registry = Registry.from_env(url)
    if registry is None:
        raise click.UsageError("--publish needs a plans service: --registry URL or HYINF_REGISTRY")
    if not registry.token:
        raise click.UsageError("--publish needs a publish token in HYINF_TOKEN (`hyinf serve token create --role publish`)")
    return registry
