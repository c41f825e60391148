"""vgg16 and resnet18 with trained weights, so approximate heatmaps are judged on meaningful ones.

Heatmaps of random-weight networks are noise. These are the torchvision architectures (4 classes)
briefly trained on generated 224x224 scenes: grey clutter (lines, dots, noise) and one filled shape
of 30-60 pixels whose colour (red, green, blue or yellow, jittered) is the class. To train on a
2-core CPU in minutes, the early stages keep their seeded random weights and only the last stage
and the classifier are trained, on features of the frozen stages computed once (the demo's harder
task, shape classes, does not train that way: accuracy stayed near chance). Weights are cached as
safetensors (no code on load) under benchmarks/.cache.

    python benchmarks/trained_models.py      # train both (a few minutes) and print held-out accuracy
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

from hyinf.demo import normalise
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


def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` normalised scenes with balanced labels."""
    rng = random.Random(seed)
    labels = [i % len(CLASSES) for i in range(n)]
    rng.shuffle(labels)
    return torch.stack([normalise(to_tensor(scene(label, rng)[0])) for label in labels]), torch.tensor(labels)


def _architecture(name: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The model, its frozen front (input -> features) and the part trained (features -> logits)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=len(CLASSES)).eval()
    if name == "vgg16":  # frozen: blocks 1-4; trained: block 5 and the classifier
        front = model.features[:24]
        # vgg16's first classifier layer reads the flattened 7x7 map: trained from a few hundred scenes it
        # cannot learn one detector per position (accuracy stayed at chance). It is trained as a layer over
        # the map's average instead and copied to every position (`_spread`): still vgg16's weights.
        pooled = nn.Linear(512, model.classifier[0].out_features)
        back = nn.Sequential(model.features[24:], nn.AdaptiveAvgPool2d(1), nn.Flatten(), pooled, *model.classifier[1:])
    else:  # resnet18: frozen through layer3; trained: layer4 and fc
        front = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3)
        back = nn.Sequential(model.layer4, model.avgpool, nn.Flatten(), model.fc)
    return model, front, back


def _spread(model: nn.Module, back: nn.Module) -> None:
    """Set vgg16's first classifier layer to the trained layer over the 7x7 map's average."""
    pooled, first = back[3], model.classifier[0]
    with torch.no_grad():
        first.weight.copy_(pooled.weight.repeat_interleave(49, dim=1) / 49)  # flatten order: channel-major
        first.bias.copy_(pooled.bias)


def _features(front: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([front(images[k : k + 32]) for k in range(0, len(images), 32)])


def train(name: str, samples: int = 480, epochs: int = 8, seed: int = 0) -> tuple[nn.Module, float]:
    """Train `name` ("vgg16" or "resnet18"); returns the model in eval mode and held-out accuracy."""
    model, front, back = _architecture(name)
    images, labels = scenes(samples, seed)
    test_images, test_labels = scenes(128, seed + 1)
    feats, test_feats = _features(front, images), _features(front, test_images)
    opt = torch.optim.AdamW(back.parameters(), lr=3e-4 if name == "vgg16" else 1e-3, weight_decay=1e-4)
    steps = epochs * (samples // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    with tqdm(total=steps, desc=f"training {name}", leave=False) as bar:
        for _ in range(epochs):
            back.train()
            order = torch.randperm(samples, generator=gen)
            for k in range(samples // 32):
                idx = order[k * 32 : (k + 1) * 32]
                loss = nn.functional.cross_entropy(back(feats[idx]), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
    model.eval()
    if name == "vgg16":
        _spread(model, back)
    with torch.no_grad():
        accuracy = float((model(test_images).argmax(1) == test_labels).float().mean())
    return model, accuracy


def trained(name: str) -> tuple[nn.Module, float]:
    """The trained model (from the cache, else trained now) and its held-out accuracy."""
    path = CACHE / f"{name}-scenes.safetensors"
    if not path.exists():
        model, accuracy = train(name)
        CACHE.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata={"accuracy": str(accuracy)})
    model, _, _ = _architecture(name)
    model.load_state_dict(load_file(path))
    with safe_open(str(path), "pt") as f:
        accuracy = float(f.metadata()["accuracy"])
    return model.eval(), accuracy


if __name__ == "__main__":
    for arch in ("resnet18", "vgg16"):
        print(f"{arch}: held-out accuracy {trained(arch)[1]:.3f}")
