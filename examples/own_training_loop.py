"""Distil a student in your own training loop from a kdcache cache (README: "Use a cache from your own code").

    python examples/own_training_loop.py --cache data/caches/fmnist-train.h5 --epochs 10 --seed 0

All but the cache is plain PyTorch: torchvision's FashionMNIST with its transforms, a DataLoader with
workers, a student defined here. The student, its initialisation, the optimiser and the schedule are
those of `kdcache train-student`, and the data order is by construction: the same sampler
(kdcache.EpochSampler over the cache's blocks, seeded, set_epoch each epoch) over the same
CachedDataset, so with the same settings and seed the two train the same student.
"""
import argparse
import json

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

import kdcache
from kdcache.config import (
    STUDENT_TRAIN,  # kdcache's defaults: lr 0.02, weight decay 5e-4, batch 128
)
from kdcache.data.datasets import (
    BUILTIN,  # Fashion-MNIST's mean/std, as kdcache standardises it
)


class Student(nn.Module):
    """conv 1->6 3x3, ReLU, maxpool(2, stride 1), linear 3750->10: kdcache's student-cnn, same init."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(1, 6, 3), nn.MaxPool2d(2, 1), nn.Linear(6 * 25 * 25, num_classes)
        nn.init.xavier_normal_(self.conv.weight), nn.init.zeros_(self.conv.bias)
        nn.init.normal_(self.fc.weight, 0.0, 0.01), nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, classes)
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Distil a student in your own loop from a kdcache cache.")
    p.add_argument("--cache", required=True, help="cache of the Fashion-MNIST train split (kdcache dump-logits)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--epochs", type=int, default=STUDENT_TRAIN.epochs)
    p.add_argument("--limit", type=int, default=None, help="train on the first N samples")
    p.add_argument("--eval-limit", type=int, default=None, help="test on the first N test samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--T", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--json", default=None, help="also write the result to this file")
    args = p.parse_args(argv)

    fmnist = BUILTIN["fashion-mnist"]
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(fmnist.mean, fmnist.std)])
    train = torchvision.datasets.FashionMNIST(args.data_dir, train=True, transform=tf)
    test = torchvision.datasets.FashionMNIST(args.data_dir, train=False, transform=tf)
    data = kdcache.CachedDataset(train, args.cache, indices=range(args.limit or len(train)))  # refuses another cache
    order = kdcache.EpochSampler(len(data), STUDENT_TRAIN.batch_size, seed=args.seed, block_rows=data.block_rows)
    loader = DataLoader(data, batch_sampler=order, num_workers=2, persistent_workers=True)

    torch.manual_seed(args.seed)
    student = Student()
    params = [{"params": [w for w in student.parameters() if w.ndim > 1], "weight_decay": STUDENT_TRAIN.weight_decay},
              {"params": [b for b in student.parameters() if b.ndim <= 1], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(params, lr=STUDENT_TRAIN.lr, momentum=0.9, nesterov=True)
    steps = args.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=STUDENT_TRAIN.lr, total_steps=steps,
                                                   pct_start=max(0.25, 2.0 / steps))
    for epoch in range(args.epochs):
        order.set_epoch(epoch)  # train-student's order of this epoch (a DistributedSampler-style call)
        for images, labels, teacher_logits in loader:
            loss = kdcache.kd_loss(student(images), teacher_logits, labels, temperature=args.T, alpha=args.alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()

    test = Subset(test, range(args.eval_limit)) if args.eval_limit else test
    with torch.inference_mode():
        correct = sum(int((student(x).argmax(1) == y).sum()) for x, y in DataLoader(test, batch_size=1000))
    result = {"test_accuracy": correct / len(test), "epochs": args.epochs, "seed": args.seed, "T": args.T,
              "alpha": args.alpha, "train_samples": len(data), "test_samples": len(test)}
    print(f"own loop: test accuracy {result['test_accuracy']:.4f} ({len(data)} training samples, {args.epochs} epochs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
