"""Whether a finished run learned anything: warnings a job reports instead of finishing quietly.

A loss that blows up stops training (kdcache.train.loop.DivergenceWatch); these catch what stays
finite yet is wrong: a model at chance, or a loss that ends higher than it started.
"""
from __future__ import annotations

import torch

from kdcache.data.samples import ImageData
from kdcache.identity import UNLABELLED

CHANCE_MARGIN = 0.01  # test accuracy within this of the majority class's share counts as chance


def chance_warnings(accuracy: float, test_data: ImageData) -> list[str]:
    """A warning when a trained model scores no better than always answering the commonest test class."""
    labels = test_data.labels[test_data.labels != UNLABELLED]
    if len(labels) == 0:
        return []
    majority = float(torch.bincount(labels).max()) / len(labels)
    if accuracy > majority + CHANCE_MARGIN:
        return []
    return [f"test accuracy {accuracy:.2%} is at chance (always answering the commonest class scores {majority:.2%}): "
            "the model learned nothing; check the data and labels, train longer, or change --lr"]


def loss_warnings(history: list[dict]) -> list[str]:
    """A warning when the training loss ended higher than it started: too high a learning rate, not yet a blow-up."""
    if len(history) < 2 or history[-1]["train_loss"] <= history[0]["train_loss"]:
        return []
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    return [f"the training loss rose from {first:.4g} (epoch 1) to {last:.4g} (epoch {len(history)}): the learning "
            "rate is probably too high; lower --lr"]
