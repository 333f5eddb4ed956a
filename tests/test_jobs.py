"""The jobs: a validation split set aside for choosing configurations, and reuse only by the same request."""
from __future__ import annotations

import pytest

from kdcache.config import DataConfig, TrainConfig
from kdcache.jobs import find_reusable, train_student


@pytest.fixture
def data_cfg(data_dir):
    return DataConfig(data_dir=str(data_dir), limit=256, eval_limit=200, val_size=300)


def test_validation_split_is_evaluated_every_epoch_and_recorded(tmp_path, data_cfg):
    r = train_student(tmp_path / "s.pt", alpha=0.0, data_cfg=data_cfg, cfg=TrainConfig(epochs=2, device="cpu"))
    assert [set(h) >= {"val_accuracy", "val_loss"} for h in r["history"]] == [True, True]
    assert r["val"]["num_samples"] == 300 and r["test"]["num_samples"] == 200
    assert r["config"]["val_accuracy"] == r["val"]["accuracy"] and r["config"]["val_size"] == 300
    assert r["history"][-1]["val_accuracy"] == pytest.approx(r["val"]["accuracy"])


def test_reuse_only_for_the_same_request(tmp_path, data_cfg):
    cfg = TrainConfig(epochs=1, device="cpu")
    first = train_student(tmp_path / "s.pt", alpha=0.0, data_cfg=data_cfg, cfg=cfg)
    again = train_student(tmp_path / "s.pt", alpha=0.0, data_cfg=data_cfg, cfg=cfg, reuse=True)
    assert again["reused"] and again["test"] == first["test"]
    other = train_student(tmp_path / "s.pt", alpha=0.0, data_cfg=data_cfg, cfg=TrainConfig(epochs=1, seed=1,
                                                                                           device="cpu"), reuse=True)
    assert not other["reused"]  # another seed: trained again, and the file now holds that run
    assert find_reusable(tmp_path / "s.pt", other["config"]["request"]) is not None
    assert find_reusable(tmp_path / "s.pt", first["config"]["request"]) is None


@pytest.mark.parametrize("streamed", [False, True])
def test_topk_cache_with_every_class_trains_the_same_student_as_full_logits(tmp_path, data_dir, streamed):
    """K = C through the real data path (cache file, alignment, batches, loss): the same losses and weights."""
    import numpy as np
    import torch

    from conftest import cache_attrs
    from kdcache.cache import write_cache
    from kdcache.data import load_dataset

    fm = load_dataset("fashion-mnist", "train", data_dir, limit=300)
    logits = np.random.default_rng(0).normal(0, 4, (300, 10)).astype(np.float32)
    paths = {}
    for name, k in (("full", 0), ("topk", 10)):
        paths[name] = write_cache(tmp_path / f"{name}.h5", logits, fm.labels, fm.indices, fm.sample_ids,
                                  cache_attrs(fm.info), topk=k, chunk_rows=64)
    kw = dict(temperature=4.0, alpha=0.7, data_cfg=DataConfig(data_dir=str(data_dir), limit=256, eval_limit=100),
              cfg=TrainConfig(epochs=2, batch_size=64, device="cpu"), cache_memory_limit_mb=0 if streamed else 2048)
    runs = {name: train_student(tmp_path / f"{name}.pt", caches=[p], **kw) for name, p in paths.items()}
    assert runs["topk"]["config"]["cache_streamed"] == streamed
    assert [h["train_loss"] for h in runs["topk"]["history"]] == \
        pytest.approx([h["train_loss"] for h in runs["full"]["history"]], rel=1e-5)
    full, top = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["state_dict"] for n in ("full", "topk"))
    for name in full:
        torch.testing.assert_close(top[name], full[name], rtol=1e-4, atol=1e-6)
