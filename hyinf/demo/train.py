"""Train the demo CNN on generated scenes and write its weights and a sample image into the package.

    python -m hyinf.demo.train          # a few minutes on a 2-core CPU
"""

from __future__ import annotations

import random

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from hyinf.demo import SAMPLE, WEIGHTS, asset, demo_cnn, normalise
from hyinf.demo.scenes import dataset, scene


def train(samples: int = 6000, epochs: int = 6, seed: int = 0) -> float:
    torch.manual_seed(seed)
    images, labels = dataset(samples, seed)
    test_images, test_labels = dataset(800, seed + 1)
    model = demo_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (samples // 64))
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(samples)
        for k in tqdm(range(samples // 64), desc=f"epoch {epoch + 1}/{epochs}"):
            idx = order[k * 64 : (k + 1) * 64]
            batch = images[idx]
            if random.random() < 0.5:
                batch = batch.flip(-1)
            loss = torch.nn.functional.cross_entropy(model(normalise(batch)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(normalise(test_images)).argmax(1) == test_labels).float().mean())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, asset(WEIGHTS))
    img, _ = scene(2, random.Random(12345))
    img.save(asset(SAMPLE))
    return accuracy


if __name__ == "__main__":
    print(f"held-out accuracy: {train():.3f}")
