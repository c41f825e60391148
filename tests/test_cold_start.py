"""`import hyinf` and `hyinf --help` load only what they use: no torch, ONNX or numpy until a call
needs them (their time is measured in benchmarks/, not asserted here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "onnx", "onnxruntime", "numpy", "sklearn", "sqlalchemy", "fastapi", "httpx")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('LOADED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    err = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stderr
    line = next(line for line in err.splitlines() if line.startswith("LOADED:"))
    return set(filter(None, line.removeprefix("LOADED:").split(",")))


@pytest.mark.parametrize(
    "code",
    [
        "import hyinf",
        "import hyinf; hyinf.__version__",
        "from hyinf.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
        "from hyinf.cli import main\ntry:\n    main(['explain', '--help'])\nexcept SystemExit:\n    pass",
        "from hyinf.cli import main\ntry:\n    main(['plans', 'list', '--help'])\nexcept SystemExit:\n    pass",
        "from hyinf.cli import main\ntry:\n    main(['serve', 'token', 'create', '--help'])\nexcept SystemExit:\n    pass",
    ],
)
def test_nothing_heavy_is_imported(code: str) -> None:
    assert _loaded_after(code) == set()


def test_the_engine_loads_without_onnx_the_database_or_fitting() -> None:
    """A torch model's run needs torch; ONNX, ONNX Runtime, SQLAlchemy and scikit-learn load where used."""
    assert _loaded_after("import hyinf.explain, hyinf.models") == {"torch", "numpy"}


def test_public_names_still_resolve() -> None:
    import hyinf
    import hyinf.explain  # the submodule import must not hide the function of the same name

    assert callable(hyinf.explain) and hyinf.explain.__module__ == "hyinf.explain"
    assert {
        "Occlusion",
        "PlanDocument",
        "HyinfError",
        "Mode",
        "Plan",
        "Quality",
        "Explanation",
        "Approximation",
    } <= set(dir(hyinf))
    with pytest.raises(AttributeError):
        hyinf.no_such_name  # noqa: B018


def test_report_names_every_fixed_cost(tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from hyinf.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", "demo", "--patch", "32", "--stride", "32", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    steps = ("startup_s", "imports_s", "checks_s", "model_load_s", "image_s", "explain_s", "write_s")
    assert set(report["process_s"]) == {*steps, "wall_s"}
    assert all(report["process_s"][k] >= 0 for k in steps)
    assert abs(report["process_s"]["wall_s"] - sum(report["process_s"][k] for k in steps)) < 1e-6
    assert {"trace_s", "verify_s", "compile_s", "plan_s", "positions_s", "total_s"} <= set(report["timings_s"])
    assert report["timings_s"]["plan_s"] <= report["timings_s"]["compile_s"]
    assert report["timings_s"]["total_s"] <= report["process_s"]["explain_s"]


def _hyinf(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    from pathlib import Path

    command = [str(Path(sys.executable).parent / "hyinf"), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "HYINF_DAEMON": "0", **(env or {})})


def test_a_hyinf_process_leaves_with_its_output_and_exit_code(tmp_path) -> None:
    """The process ends without the interpreter's teardown; what it printed and wrote, and its exit code, are kept."""
    version = _hyinf("--version")
    assert version.returncode == 0 and "hyinf" in version.stdout
    usage = _hyinf("explain", "--no-such-option")
    assert usage.returncode == 2 and usage.stderr.count("Error:") == 1
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    missing = _hyinf("explain", str(tmp_path / "none.onnx"), str(tmp_path / "a.png"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 1 and missing.stderr.count("Error:") == 1 and "Traceback" not in missing.stderr
    done = _hyinf("explain", "demo", "--patch", "32", "--stride", "32", "--out", str(tmp_path / "out"), "--quiet",
                  env={"HYINF_DB": str(tmp_path / "plans.db"), "HYINF_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "report.json").stat().st_size > 0 and (tmp_path / "out" / "heatmap.npy").exists()
    assert not (tmp_path / "plans.db").exists()  # explaining reads a named database; it never creates one


def test_a_named_database_is_read_only_where_it_exists(tmp_path, monkeypatch) -> None:
    from hyinf.plans_db.location import existing_database

    monkeypatch.delenv("HYINF_DB", raising=False)
    assert existing_database(str(tmp_path / "none.db")) is None
    assert existing_database(f"sqlite:///{tmp_path / 'none.db'}") is None
    (tmp_path / "there.db").write_bytes(b"")
    assert existing_database(str(tmp_path / "there.db")) == f"sqlite:///{tmp_path / 'there.db'}"
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    assert existing_database(url) == url  # a server's database: its existence is the server's to say
