"""Augmentation policies: batched apply == torchvision per image, parameters in range and seeded, views and schedules
as pure functions of their keys."""
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF

from kdcache.data.augment import (
    POLICIES,
    CropFlip,
    CropFlipV1,
    ShiftFlip,
    check_replay_size,
    parse_policy,
    policy_from_record,
    view_record,
)
from kdcache.data.view_schedule import ViewPlan, sample_views, view_schedule
from kdcache.errors import CacheError, ConfigError

POLICY_SPECS = ["shift-flip", "shift-flip:pad=4,flip=1", "crop-flip", "crop-flip:scale_min=0.5,ratio_min=0.5", CropFlipV1()]


def reference_view(policy, image: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """The slow per-image reference: torchvision's functional ops, one image at a time."""
    h, w = image.shape[-2:]
    if isinstance(policy, CropFlip) and policy.RELATIVE:  # fractions of the image -> whole pixels of this image
        params = np.asarray(params, np.float64) * np.array([h, w, h, w, 1])
    p = [int(round(float(v))) for v in params]
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
    assert policy.problem(p, size) is None and p.dtype == np.float32 and (p[:, :4] >= 0).all() and (p[:, :4] <= 1).all()
    p = np.round(p.astype(np.float64) * [28, 40, 28, 40, 1])  # fractions -> the pixel box drawn (exactly)
    assert np.array_equal(p, CropFlipV1().sample(np.random.default_rng(0), 4000, size))  # the same boxes as v1 drew
    top, left, h, w, flip = p.T
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
    assert (p == np.array([0.3, 0, 0.3, 1, 0], dtype=np.float32)).all()


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
    assert "not fractions inside the image" in c.problem(np.array([[0.7, 0, 0.4, 0.2, 0]], np.float32), (28, 28))
    assert c.problem(np.array([[0, 0, 0, 0.5, 0]], np.float32), (28, 28)) is not None  # empty box
    assert c.problem(np.array([[0, 0, 5, 5, 0]], np.float32), (28, 28)) is not None  # pixels, not fractions
    assert c.problem(np.array([[0, 0, 0.5, 0.5, 0.5]], np.float32), (28, 28)) is not None  # flip must be 0/1
    assert c.problem(np.array([[np.nan, 0, 0.5, 0.5, 0]], np.float32), (28, 28)) is not None
    assert c.problem(np.array([[0.3, 0.25, 0.7, 0.75, 1]], np.float32), (28, 28)) is None  # ends at the edges
    v1 = CropFlipV1()
    assert "outside the 28x28 image" in v1.problem(np.array([[20, 0, 10, 5, 0]], np.float32), (28, 28))
    assert v1.problem(np.array([[0, 0, 0, 5, 0]], np.float32), (28, 28)) is not None  # empty box
    assert v1.problem(np.array([[0.5, 0, 5, 5, 0]], np.float32), (28, 28)) is not None  # not whole pixels


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
    newer = {**view_record(CropFlip(), include_original=False, seed=0), "version": 4}  # v3: views cut from the file
    with pytest.raises(CacheError, match="version 4, which this kdcache cannot replay") as e:
        policy_from_record(newer)
    assert "\n" not in str(e.value) and "crop-flip v1, crop-flip v2, crop-flip v3" in str(e.value)
    # a cache written before v2 (absolute pixel boxes) still replays, as it was written
    old = {**view_record(CropFlip(scale_min=0.5), include_original=False, seed=0), "version": 1}
    legacy = policy_from_record(old)
    assert type(legacy) is CropFlipV1 and legacy.scale_min == 0.5 and legacy.VERSION == 1 and not legacy.RELATIVE
    assert view_record(legacy, include_original=False, seed=0) == old
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
    from kdcache.data.augment import parse_policy
    from kdcache.errors import ConfigError

    with pytest.raises(ConfigError, match="'size' is not a setting of shift-flip; its settings are flip=, pad="):
        parse_policy("shift-flip:size=3")
    with pytest.raises(ConfigError, match="pad='x' is not a number; give e.g. pad=2"):
        parse_policy("shift-flip:pad=x")
    assert parse_policy("shift-flip:pad=4").settings["pad"] == 4


def test_crop_flip_v2_replays_v1_pixel_boxes_bit_for_bit():
    """At the size the views were drawn for, a v2 (fractional) view is the very image v1's pixel box gave."""
    size = (32, 40)
    images = torch.rand(64, 3, *size)
    v1, v2 = CropFlipV1(), CropFlip()
    boxes = v1.sample(np.random.default_rng(3), 64, size)
    fractions = v2.sample(np.random.default_rng(3), 64, size)
    old = v1.apply(images, torch.from_numpy(boxes))
    assert torch.equal(v2.apply(images, torch.from_numpy(fractions)), old)  # bit-identical
    ref = torch.stack([reference_view(v1, images[i], boxes[i]) for i in range(64)])
    torch.testing.assert_close(old, ref, rtol=0, atol=1e-5)


def test_crop_flip_view_covers_the_same_region_at_any_size():
    """The same stored view at S and at 2S shows the same part of the image."""
    s = 32
    big = torch.zeros(1, 3, 2 * s, 2 * s)
    big[:, 0, 16:40, 24:56] = 1.0  # a red block, aligned to even pixels so both sizes hold it exactly
    big[:, 1, 40:, :20] = 1.0  # a green block
    small = torch.nn.functional.avg_pool2d(big, 2)  # the same image at S
    policy = CropFlip(scale_min=0.2)
    params = torch.from_numpy(policy.sample(np.random.default_rng(0), 16, (s, s)))
    at_s = policy.apply(small.expand(16, -1, -1, -1), params)
    at_2s = policy.apply(big.expand(16, -1, -1, -1), params)
    assert at_2s.shape[-1] == 2 * s
    down = torch.nn.functional.avg_pool2d(at_2s, 2)
    assert (down - at_s).abs().mean() < 0.03, (down - at_s).abs().mean()
    # and the red block's share of each view agrees
    torch.testing.assert_close(down[:, 0].mean((1, 2)), at_s[:, 0].mean((1, 2)), rtol=0, atol=0.03)
    assert torch.equal(policy.pixel_boxes(params, 2 * s, 2 * s)[:, :4], 2 * policy.pixel_boxes(params, s, s)[:, :4])


def test_a_box_is_kept_inside_any_image():
    policy = CropFlip()
    params = torch.tensor([[1.5 / 9, 0.0, 7.5 / 9, 0.01, 1.0]])  # half-pixel ends; a box under one pixel wide at 9x9
    top, left, h, w, flip = policy.pixel_boxes(params, 9, 9)[0].tolist()
    assert 0 <= top and top + h <= 9 and w == 1 and flip == 1
    out = policy.apply(torch.rand(1, 1, 9, 9), params)
    assert out.shape == (1, 1, 9, 9) and torch.isfinite(out).all()


def test_pixel_views_refuse_another_size_in_one_line():
    check_replay_size(CropFlip(), (64, 64), (32, 32), "c.h5")  # fractions: any size
    check_replay_size(ShiftFlip(), (28, 28), (28, 28), "c.h5")
    check_replay_size(ShiftFlip(), None, (32, 32), "c.h5")  # size not recorded: nothing to compare
    with pytest.raises(ConfigError, match="use crop-flip .* for images read at another --image-size") as e:
        check_replay_size(ShiftFlip(), (64, 64), (32, 32), "c.h5")
    assert "\n" not in str(e.value) and "64x64" in str(e.value) and "32x32" in str(e.value)
    with pytest.raises(ConfigError, match="re-dump the cache"):
        check_replay_size(CropFlipV1(), (64, 64), (32, 32), "c.h5")
