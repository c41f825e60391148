"""Time against chunk size: how many occlusion positions one evaluation step takes at once.

    python benchmarks/chunk_sizes.py --device cuda      # vgg16 and resnet18, 224x224, patch 16, stride 8
    python benchmarks/chunk_sizes.py --sizes 8 32 --models resnet18 --stride 32

For each model and mode, every chunk size in turn (and the default, which `hyinf.runtime.budget`
derives from the device's memory): a warm-up call, then `--repeats` timed calls; the lowest and
highest are reported. Float32 throughout (TF32 off on a GPU), each result checked against naive.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torchvision

import hyinf
from engine_speed import check, machine
from hyinf.explain import resolve_device

MODES = ("naive", "full", "incremental")


def timed(run: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[18, 64, 256])
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.backends.cudnn.allow_tf32 = False  # exact float32, as the reference
    print(f"Machine: {machine(device)}. Patch 16, stride {args.stride}; seconds per call, min (max) of {args.repeats} after a warm-up.\n")
    print(f"| model | mode | {' | '.join(str(s) for s in args.sizes)} | default (chunk) |")
    print("|---|---|" + "---|" * (len(args.sizes) + 1))
    for name in args.models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval().to(device)
        image = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
        reference = hyinf.explain(model, image, mode="naive", stride=args.stride, target=0, device=device).scores
        for mode in MODES:
            cells = []
            for size in [*args.sizes, None]:
                def run() -> hyinf.Explanation:
                    return hyinf.explain(model, image, mode=mode, stride=args.stride, target=0, device=device, batch_size=size)

                result = run()
                check(reference, result.scores, f"{name} {mode} at {size}")
                times = [timed(run, device) for _ in range(args.repeats)]
                cell = f"{min(times):.3f} ({max(times):.3f})"
                cells.append(cell if size is not None else f"{cell} ({result.batch_size})")
            print(f"| {name} | {mode} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
