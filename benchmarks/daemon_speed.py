"""What `hyinf daemon` saves a user running `hyinf explain` once per image (issue 28).

    python benchmarks/daemon_speed.py --models torchvision:resnet18 onnx:resnet50 --write docs/benchmarks.md

Per model and backend: a daemon is started on its own socket, cache folder and plans database, and
one client process warms it (the daemon loads the model, traces, plans, builds ORT sessions). Then, in
interleaved rounds, a fresh `hyinf explain` process that explains in-process with the disk cache the
daemon's warm-up left (today's second process) and a fresh client process handed to the daemon.
Reported: wall times measured outside the processes and their seconds outside the positions.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from cold_start import arguments, environment, one_run, photo, spread
from engine_speed import machine, report
from ort_speed import export


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "daemon")
    hyinf = str(Path(sys.executable).parent / "hyinf")
    lines = [f"Machine: {machine()}; fresh client processes, {args.rounds} interleaved rounds after one warm-up request; "
             "seconds, median (range).", "",
             "| model | backend | in-process, warm disk cache | outside positions | through the daemon | outside positions "
             "| first request |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = photo(folder)
        for model in args.models:
            spec = str(export(model.split(":", 1)[1], 224, folder)) if model.startswith("onnx:") else model
            for backend in args.backends:
                run = Path(tempfile.mkdtemp(dir=folder))
                socket = run / "daemon" / "daemon.sock"
                subprocess.run([hyinf, "daemon", "start"], env=environment(run, socket), check=True, capture_output=True)
                try:
                    first = one_run(spec, image, "hybrid", backend, run, socket)
                    alone, handed = [], []
                    for _ in range(args.rounds):
                        alone.append(one_run(spec, image, "hybrid", backend, run))
                        handed.append(one_run(spec, image, "hybrid", backend, run, socket))
                finally:
                    subprocess.run([hyinf, "daemon", "stop"], env=environment(run, socket), capture_output=True)
                lines.append(f"| {model} | {backend} | {spread([r['wall'] for r in alone])} | "
                             f"{spread([r['wall'] - r['positions_s'] for r in alone])} | {spread([r['wall'] for r in handed])} | "
                             f"{spread([r['wall'] - r['positions_s'] for r in handed])} | {first['wall']:.1f} |")
                print(lines[-1], file=sys.stderr)
    report("\n".join(lines) + "\n", args.write, "daemon")


if __name__ == "__main__":
    main()
