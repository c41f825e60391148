"""Loading models named on the command line. Nothing loaded here executes Python code:
weights are safetensors or tensors read with weights_only=True, and whole models come only as
torch.export programs or TorchScript archives, never as pickled modules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from hyinf import demo
from hyinf.errors import ModelError
from hyinf.graph.sources import is_onnx
from hyinf.graph.pt2_archive import load_exported
from hyinf.paths import check_readable_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_OWN_INIT = ("inception_v3", "googlenet")  # torchvision families with their own init and auxiliary heads


@dataclass(frozen=True)
class LoadedModel:
    """A model and how images are prepared for it: pixels in [0, 1] -> (pixels - mean) / std."""

    module: nn.Module
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...] = ()
    description: str = ""

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (pixels - mean) / std

    def pixel_to_input(self, value: float) -> torch.Tensor:
        """A patch value given in pixel space ([0, 1]) as per-channel model-input values."""
        return (torch.full((len(self.mean),), value) - torch.tensor(self.mean)) / torch.tensor(self.std)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    check_readable_file(path, "weights file")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read weights from {path}: {str(e).splitlines()[0]}. Give a safetensors file or a plain state dict saved with torch.save") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return state


def _keep_signal(module: nn.Module) -> None:
    """Kaiming-normal convolutions for inception_v3 and googlenet with random weights. Neither of
    torchvision's inits suits them: its truncated normal (std 0.1) blows inception_v3's scores up to
    1e12, and PyTorch's default shrinks each block's activations until occluding a patch moves the
    score by 1e-9, float noise, on both."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")


def _torchvision(name: str, weights: Path | None) -> LoadedModel:
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ModelError(f"torchvision has no classification model '{name}'; try one of: {', '.join(sorted(available)[:12])}, ...")
    torch.manual_seed(0)  # no weights can be downloaded: a fixed seed makes runs repeatable
    extra = {"aux_logits": False, "init_weights": False} if name in _OWN_INIT else {}
    module = torchvision.models.get_model(name, weights=None, **extra)
    if weights is None and name in _OWN_INIT:
        _keep_signal(module)
    if weights is not None:
        try:
            module.load_state_dict(_state_dict(weights), strict=not extra)
        except RuntimeError as e:
            raise ModelError(f"weights in {weights} do not fit torchvision:{name}: {str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from e
    size = (299, 299) if name == "inception_v3" else (224, 224)
    source = f"weights from {weights.name}" if weights else "random weights (seed 0)"
    return LoadedModel(module.eval(), size, IMAGENET_MEAN, IMAGENET_STD, description=f"torchvision:{name}, {source}")


def _file(path: Path) -> nn.Module:
    if not path.exists():
        raise ModelError(f"model file {path} does not exist; give torchvision:NAME, 'demo', a .pt2 or a TorchScript file")
    check_readable_file(path, "model file")
    if path.suffix == ".pt2":
        return load_exported(path)
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as e:
        raise ModelError(
            f"{path} is neither a torch.export (.pt2) nor a TorchScript file; hyinf never unpickles whole modules. "
            "Save the model with torch.export.save or torch.jit.save, or use torchvision:NAME --weights FILE"
        ) from e


def load_model(spec: str, weights: Path | None = None, image_size: tuple[int, int] | None = None) -> LoadedModel:
    """'demo', 'torchvision:NAME' (optionally with a local state dict), an .onnx file (`image_size` fixes
    its height and width where the file leaves them open) or a .pt2 / TorchScript file."""
    if spec == "demo":
        if weights is not None:
            raise ModelError("the demo model has its own weights; --weights applies to torchvision models")
        return LoadedModel(demo.load_demo(), (demo.IMAGE_SIZE, demo.IMAGE_SIZE), demo.MEAN, demo.STD, demo.CLASSES, "bundled demo CNN")
    if spec.startswith("torchvision:"):
        return _torchvision(spec.split(":", 1)[1], weights)
    if weights is not None:
        raise ModelError("--weights applies to torchvision:NAME models; a model file carries its own weights")
    if is_onnx(spec):
        from hyinf.graph.onnx_frontend import load_onnx  # ONNX loads only for ONNX models

        onnx_model = load_onnx(spec, image_size)
        _, channels, height, width = onnx_model.input_shape
        if onnx_model.input_type == "uint8":  # pixels 0..255, as the model declares
            mean, std = (0.0,) * channels, (1 / 255,) * channels
        else:
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.0,) * channels, (1.0,) * channels)
        return LoadedModel(onnx_model.module, (height, width), mean, std, description=f"{Path(spec).name} (ONNX opset {onnx_model.opset})")
    return LoadedModel(_file(Path(spec)), (224, 224), IMAGENET_MEAN, IMAGENET_STD, description=Path(spec).name)
