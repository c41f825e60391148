"""vgg16 and resnet18 with trained weights, so approximate heatmaps are judged on meaningful ones.

Heatmaps of random-weight networks are noise. These are the torchvision architectures (4 classes)
briefly trained, end to end, on generated scenes: grey clutter (lines, dots, noise) and one filled
disc or square whose colour (red, green, blue or yellow, jittered) is the class; the benchmark
explains 224x224 scenes with 30-60 pixel objects. To train on a 2-core CPU in minutes, training
runs on the same scenes at half size (112x112; colour does not depend on scale, and both networks
average their last map, so they run at any size), with random mid-grey squares pasted in as
augmentation so the networks learn to ignore occluded clutter. vgg16's first classifier layer
reads the flattened 7x7 map; it is trained as a layer over the map's average and copied to every
position (`_spread`). Earlier attempts that froze random early stages trained poorly or gave
heatmaps that were noise. Weights are cached as safetensors (no code on load) under
benchmarks/.cache.

    python benchmarks/trained_models.py      # train both (several minutes) and print held-out accuracy
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from hyinf.demo.scenes import to_tensor

SIZE = 224
CLASSES = {"red": (220, 40, 40), "green": (40, 190, 40), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
CACHE = Path(__file__).parent / ".cache"


def scene(label: int, rng: random.Random) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A 224x224 scene of class `label` and its object's bounding box (left, top, right, bottom)."""
    noise = np.random.default_rng(rng.randint(0, 2**31)).integers(-20, 21, (SIZE, SIZE, 1))
    img = Image.fromarray(np.clip(rng.randint(30, 110) + noise, 0, 255).repeat(3, 2).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(6, 14)):
        grey = (rng.randint(60, 230),) * 3
        draw.line(tuple(rng.randint(0, SIZE) for _ in range(4)), fill=grey, width=rng.randint(1, 3))
        x, y = rng.randint(0, SIZE), rng.randint(0, SIZE)
        draw.ellipse((x, y, x + 4, y + 4), fill=grey)
    s = rng.randint(30, 60)
    x, y = rng.randint(2, SIZE - s - 2), rng.randint(2, SIZE - s - 2)
    box = (x, y, x + s, y + s)
    colour = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in list(CLASSES.values())[label])
    if rng.random() < 0.5:
        draw.ellipse(box, fill=colour)
    else:
        draw.rectangle(box, fill=colour)
    return img, box


def scene_input(label: int, rng: random.Random) -> torch.Tensor:
    """A scene of class `label` as the models' (3, 224, 224) input."""
    return normalise(to_tensor(scene(label, rng)[0]))


def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` scenes with balanced labels, as model inputs."""
    rng = random.Random(seed)
    labels = [i % len(CLASSES) for i in range(n)]
    rng.shuffle(labels)
    return torch.stack([scene_input(label, rng) for label in labels]), torch.tensor(labels)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """Model input from pixels in [0, 1]; 0 is mid-grey, the patch value the benchmark uses."""
    return (pixels - 0.5) / 0.25


def _architecture(name: str) -> tuple[nn.Module, nn.Module]:
    """The model, and the module trained (the model itself, or for vgg16 its form with `_spread`'s layer)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=len(CLASSES)).eval()
    if name != "vgg16":
        return model, model
    pooled = nn.Linear(512, model.classifier[0].out_features)
    return model, nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), pooled, *model.classifier[1:])


def _spread(model: nn.Module, trained: nn.Module) -> None:
    """vgg16's first classifier layer set to the trained layer over the 7x7 map's average."""
    pooled, first = trained[3], model.classifier[0]
    with torch.no_grad():
        first.weight.copy_(pooled.weight.repeat_interleave(49, dim=1) / 49)  # flatten order: channel-major
        first.bias.copy_(pooled.bias)


def _occlude(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Up to three mid-grey squares (input value 0) of 4-12 pixels at random places in each image."""
    out = batch.clone()
    side = batch.shape[-1]
    for n in range(len(out)):
        for _ in range(int(torch.randint(0, 4, (), generator=gen))):
            size = int(torch.randint(4, 13, (), generator=gen))
            y, x = (int(v) for v in torch.randint(0, side - size, (2,), generator=gen))
            out[n, :, y : y + size, x : x + size] = 0
    return out


#: Per model: epochs, peak learning rate, gradient-norm clip. vgg16 has no batch norm: at a peak of
#: 2e-4 without clipping its loss blew up (to 96) and it never recovered from chance.
RECIPES: dict[str, tuple[int, float, float | None]] = {"resnet18": (6, 1e-3, None), "vgg16": (4, 1e-4, 1.0)}


def train(name: str, samples: int = 960, seed: int = 0) -> tuple[nn.Module, float]:
    """Train `name` ("vgg16" or "resnet18"); returns the model in eval mode and held-out accuracy at 224x224."""
    model, net = _architecture(name)
    epochs, lr, clip = RECIPES[name]
    images, labels = scenes(samples, seed)
    images = nn.functional.interpolate(images, scale_factor=0.5, mode="area")
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (samples // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    with tqdm(total=steps, desc=f"training {name}") as bar:
        for _ in range(epochs):
            order = torch.randperm(samples, generator=gen)
            for k in range(samples // 32):
                idx = order[k * 32 : (k + 1) * 32]
                loss = nn.functional.cross_entropy(net(_occlude(images[idx], gen)), labels[idx])
                opt.zero_grad()
                loss.backward()
                if clip is not None:
                    nn.utils.clip_grad_norm_(net.parameters(), clip)
                opt.step()
                sched.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update(1)
    model.eval()
    if name == "vgg16":
        _spread(model, net)
    test_images, test_labels = scenes(128, seed + 1)
    with torch.no_grad():
        accuracy = float((torch.cat([model(test_images[k : k + 32]) for k in range(0, 128, 32)]).argmax(1) == test_labels).float().mean())
    return model, accuracy


def trained(name: str) -> tuple[nn.Module, float]:
    """The trained model (from the cache, else trained now) and its held-out accuracy."""
    path = CACHE / f"{name}-scenes.safetensors"
    if not path.exists():
        model, accuracy = train(name)
        CACHE.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata={"accuracy": str(accuracy)})
    model, _ = _architecture(name)
    model.load_state_dict(load_file(path))
    with safe_open(str(path), "pt") as f:
        accuracy = float(f.metadata()["accuracy"])
    return model.eval(), accuracy


if __name__ == "__main__":
    for arch in ("resnet18", "vgg16"):
        print(f"{arch}: held-out accuracy {trained(arch)[1]:.3f}")
