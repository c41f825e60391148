"""Model files never run code when hyinf opens them: crafted torch.export archives are refused before
torch reads them, and a refused file leaves no trace of its payload."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from hyinf.errors import ModelError
from hyinf.models import load_model


class _Marker:
    """Unpickling this writes a marker file, then returns the real weight (so nothing looks wrong)."""

    def __init__(self, marker: Path, tensor: torch.Tensor) -> None:
        self.marker, self.tensor = marker, tensor

    def __reduce__(self):
        return (
            eval,
            (
                f"(open({str(self.marker)!r}, 'w').write('ran'), __import__('torch').nn.Parameter(__import__('torch').tensor({self.tensor.tolist()})))[1]",
            ),
        )


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(_tiny(), (torch.rand(1, 3, 16, 16),)), path)
    return path


def _rewrite(path: Path, edit) -> Path:
    """A copy of the archive with `edit(members)` applied to its {name without root: bytes} members."""
    with zipfile.ZipFile(path) as z:
        root = z.namelist()[0].split("/", 1)[0]
        members = {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}
    edit(members)
    out = path.with_name("crafted.pt2")
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(f"{root}/{name}", data)
    return out


def _pickled_weight(marker: Path):
    def edit(members: dict[str, bytes]) -> None:
        config_name = "data/weights/model_weights_config.json"
        config = json.loads(members[config_name])
        name, meta = next(iter(config["config"].items()))
        meta["use_pickle"] = True
        weight = dict(_tiny().state_dict())[name]
        buffer = io.BytesIO()
        torch.save(_Marker(marker, weight), buffer)
        members[f"data/weights/{meta['path_name']}"] = buffer.getvalue()
        members[config_name] = json.dumps(config).encode()

    return edit


def test_a_plain_archive_loads_and_runs(tmp_path) -> None:
    loaded = load_model(str(_saved(tmp_path)))
    image = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded.module(image), _tiny()(image))


def test_the_crafted_pickle_runs_when_torch_loads_it(tmp_path) -> None:
    """The attack is real: torch.export.load itself runs it (so the refusal below is what stops it)."""
    marker = tmp_path / "marker"
    crafted = _rewrite(_saved(tmp_path), _pickled_weight(marker))
    torch.export.load(crafted)
    assert marker.exists()


def _symbolic_shape(members: dict[str, bytes]) -> None:
    program = json.loads(members["models/model.json"])
    program["graph_module"]["graph"]["sym_int_values"] = {
        "s0": {"as_expr": {"expr_str": "__import__('os').getcwd()"}}
    }
    members["models/model.json"] = json.dumps(program).encode()


def _torch_target(members: dict[str, bytes]) -> None:
    program = json.loads(members["models/model.json"])
    program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.hub.load"
    members["models/model.json"] = json.dumps(program).encode()


def _shared_library(members: dict[str, bytes]) -> None:
    members["data/aotinductor/model/model.so"] = b"\x7fELF"


def _opaque_constant(members: dict[str, bytes]) -> None:
    members["data/constants/opaque_obj_0"] = pickle.dumps(1)


def _legacy_state_dict(members: dict[str, bytes]) -> None:
    members["data/weights/model.pt"] = b"PK"


def _pickled_sample_inputs(members: dict[str, bytes]) -> None:
    members["data/sample_inputs/model.pt"] = pickle.dumps(eval)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_symbolic_shape, "not a shape symbol"),
        (_torch_target, "torch.hub.load"),
        (_shared_library, "compiled code"),
        (_opaque_constant, "Python object"),
        (_legacy_state_dict, "pickled state dict"),
        (_pickled_sample_inputs, "sample inputs"),
    ],
)
def test_archives_that_could_run_code_are_refused(tmp_path, edit, words) -> None:
    with pytest.raises(ModelError, match=words):
        load_model(str(_rewrite(_saved(tmp_path), edit)))


@pytest.mark.parametrize("command", ["explain", "plan"])
def test_a_pickled_weight_is_refused_before_it_runs(tmp_path, command) -> None:
    from click.testing import CliRunner

    from hyinf.cli import main

    marker = tmp_path / "marker"
    crafted = _rewrite(_saved(tmp_path), _pickled_weight(marker))
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    args = (
        ["explain", str(crafted), str(image), "--out", str(tmp_path / "out")]
        if command == "explain"
        else ["plan", str(crafted), "--db", str(tmp_path / "db.sqlite")]
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "stored as a pickle" in result.output and "Traceback" not in result.output
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
