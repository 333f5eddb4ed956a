"""Whether a finished run learned anything: warnings a job reports instead of finishing quietly.

A loss that blows up stops training (kdcache.train.loop.DivergenceWatch); these catch what stays
finite yet is wrong: a model at chance, or a loss that ends higher than it started.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kdcache.data.samples import ImageData
from kdcache.identity import UNLABELLED

CHANCE_MARGIN = 0.01  # test accuracy within this of the majority class's share counts as chance


LEARNED_MARGIN = 0.2  # training accuracy this far above chance: the model learned its training batches


@dataclass(frozen=True)
class FitFacts:
    """What a run's evaluation at chance may be explained by: its final training accuracy and how it stepped."""

    train_accuracy: float
    steps_per_epoch: int
    batch_size: int
    batchnorm_updates: int | None = None  # batches the BatchNorm running statistics saw; None: no BatchNorm
    batchnorm_settled: bool = False  # recomputed over the training data after each epoch (kdcache.train.batchnorm)


def chance_warnings(accuracy: float, test_data: ImageData, facts: FitFacts | None = None) -> list[str]:
    """A warning when a trained model scores no better than always answering the commonest test class.

    With ``facts`` of a run whose training accuracy is well above chance, the warning names the likely cause
    (the model learned; what is evaluated does not carry it over) instead of blaming the data.
    """
    labels = test_data.labels[test_data.labels != UNLABELLED]
    if len(labels) == 0:
        return []
    majority = float(torch.bincount(labels).max()) / len(labels)
    if accuracy > majority + CHANCE_MARGIN:
        return []
    head = f"test accuracy {accuracy:.2%} is at chance (always answering the commonest class scores {majority:.2%})"
    if facts is None or facts.train_accuracy <= majority + LEARNED_MARGIN:
        return [f"{head}: the model learned nothing; check the data and labels, train longer, or change --lr"]
    steps = f"{facts.steps_per_epoch} step{'' if facts.steps_per_epoch == 1 else 's'} per epoch at batch {facts.batch_size}"
    if facts.batchnorm_updates is not None and not facts.batchnorm_settled:
        cause = (f"BatchNorm running statistics that {facts.batchnorm_updates} updates left unsettled (what eval mode "
                 f"uses), or too few steps per epoch ({steps})")
    elif facts.batchnorm_updates is not None:
        cause = f"too few steps per epoch ({steps}) for BatchNorm's batch statistics, or overfitting a small training set"
    else:
        cause = f"too few steps per epoch ({steps}), or overfitting a small training set"
    return [f"train {facts.train_accuracy:.0%} vs test {accuracy:.0%}: {head}, yet it learned its training batches; "
            f"likely cause: {cause}. Try a smaller --batch-size or more --epochs"]


def loss_warnings(history: list[dict]) -> list[str]:
    """A warning when the training loss ended higher than it started: too high a learning rate, not yet a blow-up."""
    if len(history) < 2 or history[-1]["train_loss"] <= history[0]["train_loss"]:
        return []
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    return [f"the training loss rose from {first:.4g} (epoch 1) to {last:.4g} (epoch {len(history)}): the learning "
            "rate is probably too high; lower --lr"]
