"""Is hyinf's program the model? Its output on an image against the model's own runtime (the eager
module, or ONNX Runtime on the original file), with the cause named when they differ."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from hyinf.errors import ModelError
from hyinf.runtime.precision import tensor_cores
from hyinf.runtime.program import TorchProgram

#: The program's output must agree with the model's own runtime to this fraction of the output's
#: scale (its largest magnitude), as every exact result must agree with naive re-inference.
TOLERANCE = 1e-4


def float32() -> contextlib.AbstractContextManager[None]:
    """Full float32 on a GPU: TF32 convolutions (cuDNN's default) round to 10 bits, so a model on the
    CPU and its program on a GPU would differ by far more than the check allows."""
    return tensor_cores(False)


def run_program(program: TorchProgram, image: torch.Tensor) -> torch.Tensor:
    """The program's output on `image`, every node by its full kernel."""
    values: dict[str, torch.Tensor] = {}
    for node in program.graph.nodes:
        values[node.name] = program.full[node.name](*([values[i] for i in node.inputs] or [image]))
    return values[program.graph.output]


def check_output(reference: object, got: torch.Tensor, runtime: str, rerun: Callable[[], object]) -> None:
    """Refuse, naming the cause, unless `got` equals `reference` (the model's own output) within TOLERANCE.

    `rerun` computes the reference again: a model whose two runs on one image differ is not deterministic.
    """
    if not isinstance(reference, torch.Tensor) or not reference.is_floating_point():
        kind = (
            type(reference).__name__
            if not isinstance(reference, torch.Tensor)
            else f"a {reference.dtype} tensor"
        )
        raise ModelError(
            f"the model returns {kind}; hyinf explains models whose output is one float tensor of scores"
        )
    reference = reference.detach().to(got.device, torch.float32)
    if tuple(reference.shape) != tuple(got.shape):
        raise ModelError(
            f"hyinf's program of the model gives an output of shape {tuple(got.shape)}, {runtime} one of "
            f"{tuple(reference.shape)}; it cannot be explained exactly: use mode='naive'"
        )
    if not torch.isfinite(reference).all():
        raise ModelError(
            f"the model's output on this image holds NaN or infinite values under {runtime} "
            "(NaN or infinite weights, or an overflow): fix the model or its weights"
        )
    scale = float(reference.abs().max().clamp(min=1e-6))
    error = float((got - reference).abs().max()) if torch.isfinite(got).all() else float("inf")
    if error <= TOLERANCE * scale:
        return
    again = rerun()
    if isinstance(again, torch.Tensor) and not torch.equal(
        again.detach().to(reference.device, torch.float32), reference
    ):
        raise ModelError(
            "the model gives different outputs for the same image (random operations in forward, such as "
            "dropout in training mode or torch.rand, or state it changes on every call): occlusion needs a "
            "deterministic model"
        )
    raise ModelError(
        f"hyinf's program of the model differs from {runtime} on this image by {error:.3g}, more than "
        f"{TOLERANCE:g} of the output scale {scale:.3g}: hyinf refuses rather than answer differently; "
        "use mode='naive' and report the model"
    )


def check_batches(run: Callable[[torch.Tensor], object], image: torch.Tensor, single: torch.Tensor) -> None:
    """Refuse a model whose output for a batch of two images is not its outputs for each (`single` is
    `run(image)`): occluded images are evaluated in batches. The second image is the first mirrored and
    halved, so that neither its layout nor its statistics equal the first's."""
    other = image.flip(-1) * 0.5
    pair, alone = run(torch.cat([image, other])), run(other)
    expected = (
        torch.cat([single, alone.to(single.device, single.dtype)])
        if isinstance(alone, torch.Tensor)
        else None
    )
    if (
        expected is None
        or not isinstance(pair, torch.Tensor)
        or pair.shape != expected.shape
        or not torch.allclose(
            pair.to(single.device, single.dtype),
            expected,
            rtol=TOLERANCE,
            atol=TOLERANCE * float(expected.abs().max()),
        )
    ):
        shape = tuple(pair.shape) if isinstance(pair, torch.Tensor) else type(pair).__name__
        raise ModelError(
            f"the model mixes the images of a batch (a batch of two gives {shape}, not each image's own "
            "output); hyinf evaluates occluded images in batches: export the model with a free batch axis"
        )


def program_output(program: TorchProgram, image: torch.Tensor, computed: torch.Tensor | None = None) -> torch.Tensor:
    """The program's float32 output on `image`: `computed` (its output already at hand) on a CPU, where
    float32 is all there is; computed again with TF32 off on a GPU."""
    if computed is not None and image.device.type == "cpu":
        return computed
    with torch.no_grad(), float32():
        return run_program(program, image.to(program.device))


def check_torch(model: nn.Module, program: TorchProgram, image: torch.Tensor, batches: bool = False,
                computed: torch.Tensor | None = None) -> None:
    """The program against the eager module on `image` (in eval mode, float32, the module's train flag
    restored); `computed` is the program's output on it where already at hand (see program_output).
    With `batches`, also that the program evaluates batches image by image (a property of the model,
    checked once when it is traced)."""
    if isinstance(model, torch.jit.ScriptModule):
        return  # its program runs the module itself
    where = next(iter(model.parameters()), image).device

    def eager() -> object:
        training = model.training
        with contextlib.suppress(NotImplementedError):  # torch.export modules are already in eval form
            model.eval()
        try:
            with float32():
                return model(image.clone().to(where))
        finally:
            with contextlib.suppress(NotImplementedError):
                model.train(training)

    got = program_output(program, image, computed)
    with torch.no_grad(), float32():
        check_output(eager(), got, "the model run eagerly", eager)
        if batches:
            check_batches(lambda batch: run_program(program, batch), image.to(program.device), got)
