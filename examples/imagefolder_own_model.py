"""Distil your own model from your own image folder: a torchvision teacher, kdcache's cache, your own loop.

    python examples/imagefolder_own_model.py ROOT/train [--out cache.h5] [--size 64]

ROOT/train is a torchvision ImageFolder (one folder per class). The teacher is any nn.Module (here an
untrained torchvision resnet18 stands in for your trained one); kdcache runs it once over the folder
and stores its logits on 4 random-resized-crop views of each image, then a small student trains from them
for two epochs with kdcache.CachedDataset (replaying those very crops) and kdcache.kd_loss. Without ROOT a small folder of random images is made in a temporary directory.
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    PILToTensor,
    Resize,
    ToTensor,
)

import kdcache
from kdcache.config import DumpConfig, RunOptions, ViewConfig

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # kdcache's default for uint8 RGB images: ImageNet's
VIEWS, EPOCHS = 4, 2


def make_folder(root: Path, classes=("cat", "dog"), per_class: int = 8) -> Path:
    g = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(g.normal(60 + 120 * k, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=None, help="an ImageFolder root (default: a generated one)")
    p.add_argument("--out", default="cache.h5")
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    folder = Path(args.folder) if args.folder else make_folder(Path(tempfile.mkdtemp()) / "train")
    resize = [Resize(args.size * 8 // 7), CenterCrop(args.size)]

    # 1. The teacher's logits, once: any nn.Module over any map-style Dataset of (image, label).
    # With views, it labels VIEWS random-resized crops (+ flips) of each image and stores each crop's box as
    # fractions of the image, so your loop replays exactly the crops the teacher saw, at any resolution.
    data = ImageFolder(str(folder), transform=Compose([*resize, PILToTensor()]))  # uint8; kdcache standardises
    teacher = torchvision.models.resnet18(num_classes=len(data.classes))  # load your trained weights here
    kdcache.dump_logits(teacher, args.out, dataset=data, dump=DumpConfig(normalize=(MEAN, STD)), views=ViewConfig(views=VIEWS, augment="crop-flip"), run=RunOptions(overwrite=True))

    # 2. Your student, your loop: the same folder, your own transform, the cached logits alongside.
    # Views are built on images in [0, 1] (ToTensor); your normalisation runs after them (transform=).
    train = ImageFolder(str(folder), transform=Compose([*resize, ToTensor()]))
    cached = kdcache.CachedDataset(train, args.out, transform=Normalize(MEAN, STD))  # checks it is this folder's
    loader = DataLoader(cached, batch_size=8, shuffle=True, collate_fn=kdcache.collate)
    student = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, len(train.classes)))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for epoch in range(EPOCHS):
        cached.set_epoch(epoch)  # each epoch every image shows another of its stored views (each once per VIEWS)
        for images, labels, teacher_logits in loader:  # teacher_logits: the logits of exactly this view
            loss = kdcache.kd_loss(student(images), teacher_logits, labels, temperature=4.0, alpha=0.5)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    print(f"cached {len(data)} x {len(data.classes)} teacher logits ({VIEWS} views each) in {args.out}; student loss "
          f"{np.mean(losses):.4f}")
    return {"rows": len(cached), "losses": losses}


if __name__ == "__main__":
    main()
