"""A Hugging Face dataset from Python: cache a teacher's logits over it, then train from a shuffled copy.

    python examples/hf_dataset.py [DS] [--out cache.h5]

DS is a dataset saved with ``save_to_disk`` (its ``train`` split is used); without it a small one of random
PNGs is made in a temporary directory. kdcache takes the ``datasets.Dataset`` as it is: the ``Image`` feature
is the image, the ``ClassLabel`` the label and its names the classes (other columns: ``DumpConfig``/
``WrapOptions(image_key=..., label_key=...)``). Rows are keyed by their encoded image bytes and label, so
``CachedDataset`` finds each row of a shuffled or re-saved copy by content. The README's "Hugging Face
datasets from Python" block is the part between the ``# --- README`` markers, word for word (a test checks it).
"""
import argparse
import io
import tempfile
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_from_disk
from PIL import Image as PILImage
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import CenterCrop, Compose, Normalize, Resize, ToTensor

import kdcache
from kdcache.config import DataConfig, RunOptions

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_dataset(path: Path, classes=("cat", "dog"), per_class: int = 8) -> Path:
    """A DatasetDict of PNGs of random sizes (train and test), saved with save_to_disk."""
    datasets.disable_progress_bars()
    g = np.random.default_rng(0)

    def split(n: int) -> Dataset:
        images, labels = [], []
        for k in range(len(classes)):
            for _ in range(n):
                buf = io.BytesIO()
                pixels = np.clip(g.normal(60 + 120 * k, 40, (int(g.integers(30, 60)), 48, 3)), 0, 255)
                PILImage.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
                images.append({"bytes": buf.getvalue(), "path": None})
                labels.append(k)
        return Dataset.from_dict({"image": images, "label": labels},
                                 features=Features({"image": Image(), "label": ClassLabel(names=list(classes))}))

    DatasetDict({"train": split(per_class), "test": split(per_class // 2)}).save_to_disk(str(path))
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", nargs="?", default=None, help="a dataset saved with save_to_disk (default: generated)")
    p.add_argument("--out", default="hf.h5")
    args = p.parse_args(argv)
    path = Path(args.dataset) if args.dataset else make_dataset(Path(tempfile.mkdtemp()) / "ds")
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    run = RunOptions(overwrite=True)
    # --- README
    train = load_from_disk(str(path))["train"]            # a datasets.Dataset: Image + ClassLabel features
    kdcache.dump_logits(teacher, args.out, dataset=train,  # decoded at 32 px as a folder's files; keyed by bytes
                        data_cfg=DataConfig(image_size=32), run=run)
    tf = Compose([Resize(36), CenterCrop(32), ToTensor(), Normalize(MEAN, STD)])  # the student's own transform
    shuffled = train.shuffle(seed=0)                       # any order, any copy: rows are found by content id
    shuffled.set_transform(lambda b: {"image": [tf(im.convert("RGB")) for im in b["image"]], "label": b["label"]})
    cached = kdcache.CachedDataset(shuffled, args.out)     # each row's teacher logits, found by its image bytes
    loader = DataLoader(cached, batch_size=8, shuffle=True, collate_fn=kdcache.collate)
    for batch in loader:                                   # dicts: "image", "label", and "teacher_logits" added
        loss = kdcache.kd_loss(student(batch["image"]), batch["teacher_logits"], batch["label"],
                               temperature=4.0, alpha=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # --- README
    print(f"cached {len(train)} x {len(train.features['label'].names)} teacher logits of a Hugging Face dataset in "
          f"{args.out}; last loss {float(loss.detach()):.4f}; checked {', '.join(cached.alignment.checked)}")
    return {"rows": len(cached), "loss": float(loss.detach())}


if __name__ == "__main__":
    main()
