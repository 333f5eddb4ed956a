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
