"""The Dataset wrapper's cost: an epoch of the example loop through CachedDataset vs the same loop on labels only.

    .venv/bin/python -m benchmarks.wrapper [--cache data/caches/fmnist-train.h5] [--repeats 3] [--out wrapper.json]
    .venv/bin/python -m benchmarks.wrapper --smoke --out /tmp/wrapper.json        # tiny, with a cache it builds

Both sides run examples/own_training_loop.py's loop: torchvision's FashionMNIST (ToTensor +
Normalize) through the same DataLoader (batch 128, shuffled, ``--workers`` workers) into the same
student (student-cnn, SGD). "labels only" wraps nothing and trains on cross-entropy; "wrapper"
wraps the dataset in kdcache.CachedDataset and trains on kd_loss (T 4, alpha 0.5). The ratio
wrapper / labels only (median of ``--repeats``, sides alternating) is what an epoch costs for
distilling from the cache; the target is <= 1.10. The wrapper's one-off alignment check is
timed separately. Full scale (60,000 samples, 3 repeats = 6 epochs of ~40 s): about 4 minutes on 2 cores;
measured at 10,000 samples beside other jobs: 1.02x.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import kdcache
from kdcache.data.datasets import BUILTIN, load_dataset
from kdcache.train.models import build_model

TARGET = 1.10


def fashion_mnist(data_dir: str) -> Any:
    import torchvision
    from torchvision import transforms

    spec = BUILTIN["fashion-mnist"]
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
    return torchvision.datasets.FashionMNIST(data_dir, train=True, transform=tf)


def epoch_seconds(dataset: Any, distil: bool, batch_size: int, workers: int, seed: int) -> float:
    """One epoch of the example loop (DataLoader start-up included, as in every epoch of a real run)."""
    torch.manual_seed(seed)
    student = build_model("student-cnn")
    optimizer = torch.optim.SGD(student.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    for batch in loader:
        if distil:
            images, labels, teacher_logits = batch
            loss = kdcache.kd_loss(student(images), teacher_logits, labels, temperature=4.0, alpha=0.5)
        else:
            images, labels = batch
            loss = F.cross_entropy(student(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def smoke_cache(folder: Path, data_dir: str, n: int) -> Path:
    """A cache of the first ``n`` training samples with random logits (timing does not depend on their values)."""
    from kdcache.cache import write_cache

    d = load_dataset("fashion-mnist", "train", data_dir, limit=n)
    logits = np.random.default_rng(0).normal(0, 4, (n, 10)).astype(np.float32)
    attrs = {"kdcache_version": kdcache.__version__, "torch_version": str(torch.__version__),
             "teacher_arch": "random", "teacher_sha256": "0" * 64, "teacher_precision": "fp32",
             "dataset": d.info.name, "split": d.info.split, "dataset_num_samples": d.info.num_samples,
             "dataset_fingerprint": d.info.fingerprint, "class_names": list(d.info.class_names),
             "normalization_mean": list(d.info.mean), "normalization_std": list(d.info.std)}
    return write_cache(folder / "smoke.h5", logits, d.labels, d.indices, d.sample_ids, attrs, overwrite=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="data/caches/fmnist-train.h5", help="cache of the Fashion-MNIST train split")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--limit", type=int, default=None, help="samples per epoch (default: every row of the cache)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    p.add_argument("--smoke", action="store_true", help="512 samples, 1 repeat, a random cache built on the fly")
    p.add_argument("--out", default=None, help="write the result as JSON")
    args = p.parse_args(argv)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(old_threads)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.limit, args.repeats = args.limit or 512, 1
            args.cache = str(smoke_cache(Path(tmp), args.data_dir, args.limit))
        with kdcache.open_cache(args.cache) as c:
            n = min(args.limit or len(c), len(c))
        train = fashion_mnist(args.data_dir)
        plain = Subset(train, range(n))
        t0 = time.perf_counter()
        wrapped = kdcache.CachedDataset(train, args.cache, indices=range(n))
        setup = time.perf_counter() - t0
        times: dict[str, list[float]] = {"labels only": [], "wrapper": []}
        for r in range(args.repeats):  # alternate which side runs first, so drift hits both alike
            for name in (("labels only", "wrapper") if r % 2 == 0 else ("wrapper", "labels only")):
                ds, distil = (wrapped, True) if name == "wrapper" else (plain, False)
                times[name].append(epoch_seconds(ds, distil, args.batch_size, args.workers, seed=r))
    a, b = statistics.median(times["wrapper"]), statistics.median(times["labels only"])
    result = {"samples": n, "batch_size": args.batch_size, "workers": args.workers, "threads": args.threads,
              "repeats": args.repeats, "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
              "cache": args.cache if not args.smoke else "smoke", "alignment_check_seconds": setup,
              "seconds": times, "wrapper_seconds": a, "labels_only_seconds": b, "ratio": a / b, "target": TARGET,
              "met": a / b <= TARGET}
    print(f"epoch of {n} samples, {args.workers} DataLoader workers, median of {args.repeats}: labels only {b:.2f}s, "
          f"wrapper + kd_loss {a:.2f}s -> {a / b:.3f}x (target <= {TARGET}x, {'met' if result['met'] else 'NOT met'}); "
          f"alignment check once {setup:.2f}s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
