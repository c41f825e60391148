"""`hyinf daemon start|stop|status`: a resident process that `hyinf explain` hands single images to."""

from __future__ import annotations

import subprocess
import sys
import time

import click

from hyinf.cli import main

START_TIMEOUT_S = 120.0  # importing torch and the engine on a cold disk


@main.group()
def daemon() -> None:
    """A resident hyinf that keeps torch and models loaded: `hyinf explain` uses it while it runs.

    Example: hyinf daemon start; hyinf explain torchvision:resnet18 cat.jpg; hyinf daemon stop
    """


@daemon.command()
@click.option("--idle-minutes", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Exit after this long without a request.")
def start(idle_minutes: float) -> None:
    """Start the daemon in the background (its socket: $HYINF_DAEMON_SOCKET or the user's runtime folder)."""
    from hyinf.daemon import DaemonError, request, socket_path

    path = socket_path()
    try:
        status = request({"op": "status"}, path, timeout=5)
        click.echo(f"a hyinf daemon already runs (pid {status.get('pid')}) at {path}")
        return
    except DaemonError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = path.with_suffix(".log")
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "hyinf.daemon", str(path), str(idle_minutes * 60)], stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"the daemon exited at start (code {process.returncode}); its log: {log}")
        try:
            request({"op": "status"}, path, timeout=5)
            click.echo(f"hyinf daemon started (pid {process.pid}) at {path}; `hyinf explain` hands it single images "
                       f"(HYINF_DAEMON=0 explains in-process); it exits after {idle_minutes:g} idle minutes")
            return
        except DaemonError:
            time.sleep(0.2)
    process.kill()
    raise click.ClickException(f"the daemon did not answer within {START_TIMEOUT_S:.0f} s; its log: {log}")


@daemon.command()
def stop() -> None:
    """Stop the daemon."""
    from hyinf.daemon import DaemonError, remove_stale, request, socket_path

    path = socket_path()
    try:
        request({"op": "stop"}, path, timeout=30)
    except DaemonError as e:
        if e.stale:
            remove_stale(path)
            raise click.ClickException(f"{e}: it was stopped or killed before; removed its socket") from None
        raise click.ClickException(str(e)) from None
    click.echo("hyinf daemon stopped")


@daemon.command()
def status() -> None:
    """Whether the daemon runs, since when, and which models it holds."""
    from hyinf.daemon import DaemonError, request, socket_path

    try:
        s = request({"op": "status"}, socket_path(), timeout=10)
    except DaemonError as e:
        raise click.ClickException(str(e)) from None
    models = ", ".join(s.get("models", [])) or "none yet"
    click.echo(f"hyinf daemon pid {s.get('pid')}, up {float(s.get('uptime_s', 0)) / 60:.1f} min, {s.get('served')} requests served; "
               f"models held: {models}")
