"""A dataset of dict items from Python (Hugging Face style): cache a teacher's logits, then train from them.

    python examples/dict_dataset.py [ROOT/train] [--out cache.h5]

Each item is ``{"image": uint8 (3, S, S), "label": int}``, what a Hugging Face image dataset with a transform
gives. kdcache finds the image and label by their keys (image/img/pixel_values/jpg/..., label/labels/cls/
target/...; other names go in ``DumpConfig``/``WrapOptions(image_key=..., label_key=...)``). The README's
"a dataset of dict items" block is the part between the ``# --- README`` markers, word for word (a test
checks it). Without ROOT a small folder of random images is made in a temporary directory.
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import CenterCrop, Compose, ConvertImageDtype, Normalize, PILToTensor, Resize

import kdcache
from kdcache.config import RunOptions

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Photos(Dataset):
    """``{"image", "label"}`` items from the files of an ImageFolder-style folder (one folder per class)."""

    def __init__(self, root: Path, size: int = 32):
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.files = [(f, k) for k, name in enumerate(self.classes) for f in sorted((root / name).iterdir())]
        self.transform = Compose([Resize(size * 8 // 7), CenterCrop(size), PILToTensor()])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        path, label = self.files[i]
        with Image.open(path) as im:
            return {"image": self.transform(im.convert("RGB")), "label": label}


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
    p.add_argument("folder", nargs="?", default=None, help="a folder with one subfolder per class (default: generated)")
    p.add_argument("--out", default="dicts.h5")
    args = p.parse_args(argv)
    folder = Path(args.folder) if args.folder else make_folder(Path(tempfile.mkdtemp()) / "train")
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    run = RunOptions(overwrite=True)
    # --- README
    data = Photos(folder)                                  # items {"image": uint8 (3, 32, 32), "label": int}
    kdcache.dump_logits(teacher, args.out, dataset=data, run=run)   # uint8: standardised with ImageNet's mean/std
    cached = kdcache.CachedDataset(data, args.out,         # checks every item's label and content id
                                   transform=Compose([ConvertImageDtype(torch.float), Normalize(MEAN, STD)]))
    loader = DataLoader(cached, batch_size=8, shuffle=True, collate_fn=kdcache.collate)
    for batch in loader:                                   # dicts: "image", "label", and "teacher_logits" added
        loss = kdcache.kd_loss(student(batch["image"]), batch["teacher_logits"], batch["label"],
                               temperature=4.0, alpha=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # --- README
    print(f"cached {len(data)} x {len(data.classes)} teacher logits of dict items in {args.out}; last loss "
          f"{float(loss.detach()):.4f}; checked {', '.join(cached.alignment.checked)}")
    return {"rows": len(cached), "loss": float(loss.detach())}


if __name__ == "__main__":
    main()
