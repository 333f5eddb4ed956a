"""Augmentation policies: batched apply == torchvision per image, parameters in range and seeded, views and schedules
as pure functions of their keys."""
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF

from kdcache.augment import (POLICIES, CropFlip, ShiftFlip, ViewPlan, parse_policy, policy_from_record, sample_views,
                             view_record, view_schedule)
from kdcache.errors import CacheError, ConfigError

POLICY_SPECS = ["shift-flip", "shift-flip:pad=4,flip=1", "crop-flip", "crop-flip:scale_min=0.5,ratio_min=0.5"]


def reference_view(policy, image: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """The slow per-image reference: torchvision's functional ops, one image at a time."""
    p = [int(v) for v in params]
    h, w = image.shape[-2:]
    if isinstance(policy, ShiftFlip):
        out = TF.crop(TF.pad(image, [policy.pad] * 4, fill=0), policy.pad + p[0], policy.pad + p[1], h, w)
    else:
        out = TF.resized_crop(image, p[0], p[1], p[2], p[3], [h, w], antialias=False)
    return TF.hflip(out) if p[-1] else out


@pytest.mark.parametrize("spec", POLICY_SPECS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 20, 33)])
def test_batched_apply_equals_the_per_image_reference(spec, shape):
    policy = parse_policy(spec)
    images = torch.rand(48, *shape)
    params = policy.sample(np.random.default_rng(1), 48, shape[1:])
    out = policy.apply(images, torch.from_numpy(params))
    assert out.shape == images.shape and out.dtype == torch.float32
    ref = torch.stack([reference_view(policy, images[i], params[i]) for i in range(48)])
    if isinstance(policy, ShiftFlip):
        assert torch.equal(out, ref)  # a pure copy: bit for bit
    else:
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)  # bilinear: same formula, other rounding order
    assert (params[:, -1] == 1).any() and (params[:, -1] == 0).any() or policy.flip in (0, 1)


@pytest.mark.parametrize("spec", POLICY_SPECS)
def test_identity_parameters_give_the_image_exactly(spec):
    policy = parse_policy(spec)
    images = torch.rand(5, 2, 17, 23)
    assert torch.equal(policy.apply(images, torch.from_numpy(policy.identity(5, (17, 23)))), images)
    assert policy.problem(policy.identity(5, (17, 23)), (17, 23)) is None


def test_shift_flip_parameters_cover_their_range():
    policy = ShiftFlip(pad=2)
    p = policy.sample(np.random.default_rng(0), 4000, (28, 28))
    assert p.dtype == np.float32 and p.shape == (4000, 3)
    assert set(np.unique(p[:, 0])) == set(np.unique(p[:, 1])) == {-2, -1, 0, 1, 2}
    assert set(np.unique(p[:, 2])) == {0, 1} and abs(p[:, 2].mean() - 0.5) < 0.05
    assert policy.problem(p, (28, 28)) is None


def test_crop_flip_boxes_follow_torchvision_get_params():
    policy = CropFlip()
    size = (28, 40)
    p = policy.sample(np.random.default_rng(0), 4000, size)
    top, left, h, w, flip = p.T
    assert policy.problem(p, size) is None
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 40).all()
    assert (p == np.round(p)).all() and set(np.unique(flip)) == {0, 1}
    area = h * w / (28 * 40)
    assert area.min() >= 0.08 * 0.8 and area.max() <= 1.0
    # The same distribution as torchvision's sampler: compare the means of h, w, top, left.
    torch.manual_seed(0)
    img = torch.zeros(1, *size)
    tv = np.array([T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)], dtype=float)
    ours = np.column_stack([top, left, h, w])
    se = np.sqrt(ours.var(0) / 4000 + tv.var(0) / 4000)
    assert (np.abs(ours.mean(0) - tv.mean(0)) < 4 * se).all(), (ours.mean(0), tv.mean(0))


def test_crop_flip_falls_back_to_a_centre_crop():
    policy = CropFlip(scale_min=1.0, scale_max=1.0, ratio_min=3.0, ratio_max=3.0, flip=0.0)  # never fits 10x10
    p = policy.sample(np.random.default_rng(0), 5, (10, 10))
    # torchvision: in_ratio 1 < 3, so w = 10, h = round(10 / 3) = 3, centred
    assert (p == np.array([3, 0, 3, 10, 0], dtype=np.float32)).all()


@pytest.mark.parametrize("spec", POLICY_SPECS)
def test_same_seed_same_parameters(spec):
    policy = parse_policy(spec)
    a = policy.sample(np.random.default_rng(7), 100, (28, 28))
    assert np.array_equal(a, policy.sample(np.random.default_rng(7), 100, (28, 28)))
    assert not np.array_equal(a, policy.sample(np.random.default_rng(8), 100, (28, 28)))


def test_problem_names_bad_parameters():
    s, c = ShiftFlip(pad=2), CropFlip()
    assert "outside [-2, 2]" in s.problem(np.array([[3, 0, 0]], np.float32), (28, 28))
    assert s.problem(np.array([[0, 0, 0.5]], np.float32), (28, 28)) is not None  # flip must be 0/1
    assert s.problem(np.zeros((2, 4)), (28, 28)).startswith("shift-flip parameters need 3 columns")
    assert "outside the 28x28 image" in c.problem(np.array([[20, 0, 10, 5, 0]], np.float32), (28, 28))
    assert c.problem(np.array([[0, 0, 0, 5, 0]], np.float32), (28, 28)) is not None  # empty box
    assert c.problem(np.array([[0.5, 0, 5, 5, 0]], np.float32), (28, 28)) is not None  # not whole pixels


def test_parse_policy_settings_and_refusals():
    assert parse_policy("shift-flip:pad=4") == ShiftFlip(pad=4, flip=0.5)
    assert parse_policy("crop-flip:scale_min=0.25").scale_min == 0.25
    with pytest.raises(ConfigError, match="choose one of: crop-flip, shift-flip"):
        parse_policy("rotate")
    with pytest.raises(ConfigError, match="its settings are flip=, pad="):
        parse_policy("shift-flip:size=3")
    with pytest.raises(ConfigError, match="pad must be a whole number"):
        parse_policy("shift-flip:pad=1.5")
    with pytest.raises(ConfigError, match="scale_min <= scale_max"):
        parse_policy("crop-flip:scale_min=0.9,scale_max=0.5")


def test_record_round_trip_and_unknown_versions():
    for name, cls in POLICIES.items():
        record = view_record(cls(), include_original=True, seed=3)
        assert set(record) == {"name", "version", "settings", "param_names", "include_original", "seed"}
        assert record["param_names"] == list(cls.PARAM_NAMES) and record["version"] == cls.VERSION
        assert policy_from_record(record) == cls()
    newer = {**view_record(ShiftFlip(), include_original=False, seed=0), "version": 2}
    with pytest.raises(CacheError, match="version 2, which this kdcache cannot replay.*upgrade kdcache"):
        policy_from_record(newer)
    with pytest.raises(CacheError, match="cannot replay"):
        policy_from_record({"name": "warp", "version": 1})


def test_views_are_a_pure_function_of_seed_view_and_index():
    policy, size = CropFlip(), (28, 28)
    keys = np.arange(3000)
    full = sample_views(policy, keys, 4, seed=5, image_size=size)
    assert full.shape == (3000, 4, 5) and full.dtype == np.float32
    # however the rows are split (batches, ranks), and in whatever order: the same parameters
    parts = np.concatenate([sample_views(policy, keys[s:s + 777], 4, 5, size) for s in range(0, 3000, 777)])
    assert np.array_equal(parts, full)
    shuffled = np.random.default_rng(0).permutation(3000)
    assert np.array_equal(sample_views(policy, keys[shuffled], 4, 5, size), full[shuffled])
    # a K-view cache's views are the first K of a bigger one; view 0 the original without changing the others
    assert np.array_equal(sample_views(policy, keys, 2, 5, size), full[:, :2])
    with_original = sample_views(policy, keys, 4, 5, size, include_original=True)
    assert np.array_equal(with_original[:, 0], policy.identity(3000, size)) and np.array_equal(with_original[:, 1:],
                                                                                              full[:, 1:])
    assert not np.array_equal(sample_views(policy, keys, 4, 6, size), full)
    assert not np.array_equal(full[:, 0], full[:, 1])


def test_view_schedule_visits_each_view_once_per_cycle():
    n, k = 500, 4
    epochs = np.stack([view_schedule(e, n, k, seed=1) for e in range(2 * k)])  # (epochs, n)
    for cycle in (epochs[:k], epochs[k:]):
        assert (np.sort(cycle, axis=0) == np.arange(k)[:, None]).all()  # every row sees every view once
    assert not np.array_equal(epochs[:k], epochs[k:])  # a fresh order each cycle
    assert np.array_equal(view_schedule(3, n, k, 1), epochs[3]) and not np.array_equal(view_schedule(3, n, k, 2),
                                                                                        epochs[3])
    assert abs(np.bincount(epochs[0], minlength=k) / n - 1 / k).max() < 0.08  # no view favoured within an epoch
    assert (view_schedule(5, n, 1, 0) == 0).all()


def test_view_plan_replays_stored_views_or_draws_fresh_ones():
    policy = ShiftFlip()
    stored = torch.from_numpy(sample_views(policy, np.arange(50), 3, 0, (28, 28)))
    plan = ViewPlan(policy, (28, 28), seed=2, stored=stored)
    views, params = plan.for_epoch(1, 50)
    assert torch.equal(views, torch.from_numpy(view_schedule(1, 50, 3, 2)))
    assert torch.equal(params, stored[torch.arange(50), views])
    fresh = ViewPlan(policy, (28, 28), seed=2)
    none, p1 = fresh.for_epoch(1, 50)
    assert none is None and torch.equal(p1, fresh.for_epoch(1, 50)[1]) and not torch.equal(p1, fresh.for_epoch(2, 50)[1])
    assert math.isclose(float(p1[:, 2].float().mean()), 0.5, abs_tol=0.2)


def test_bad_settings_say_which_part_is_wrong():
    from kdcache.augment import parse_policy
    from kdcache.errors import ConfigError

    with pytest.raises(ConfigError, match="'size' is not a setting of shift-flip; its settings are flip=, pad="):
        parse_policy("shift-flip:size=3")
    with pytest.raises(ConfigError, match="pad='x' is not a number; give e.g. pad=2"):
        parse_policy("shift-flip:pad=x")
    assert parse_policy("shift-flip:pad=4").settings["pad"] == 4
