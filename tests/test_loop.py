"""The training loop, batch sources, and cached KD == online KD."""
import pytest
import torch
from conftest import make_image_data

from benchmarks import train_batches as memory_batches
from kdcache.cache import open_cache
from kdcache.config import DataConfig, DumpConfig, TrainConfig
from kdcache.data.datasets import load_dataset
from kdcache.data.samples import normalize
from kdcache.device import resolve_device
from kdcache.errors import ConfigError
from kdcache.jobs.dump import dump_logits
from kdcache.jobs.student_targets import distillation_loss
from kdcache.train.checkpoint import load_checkpoint, model_config, save_checkpoint
from kdcache.train.loop import cross_entropy_loss, evaluate, fit
from kdcache.train.loss import kd_loss
from kdcache.train.models import build_model


def test_memory_batches_cover_epoch_and_keep_logits_with_images(image_data):
    d = image_data
    # teacher logits that encode the row: column 0 holds the sum of the row's pixels
    marker = d.images.float().sum(dim=(1, 2, 3))
    logits = torch.zeros(len(d), 10)
    logits[:, 0] = marker
    batches = memory_batches(d, 10, shuffle=True, seed=3, targets=logits)
    assert len(batches) == 7
    seen = []
    for b in batches:
        raw = b.images * torch.tensor(d.info.std).view(1, -1, 1, 1) + torch.tensor(d.info.mean).view(1, -1, 1, 1)
        assert torch.allclose((raw * 255).sum(dim=(1, 2, 3)), b.teacher_logits[:, 0], rtol=1e-4)
        seen.append(b.labels)
    assert sorted(torch.cat(seen).tolist()) == sorted(d.labels.tolist())
    first = [b.labels.tolist() for b in batches]
    assert [b.labels.tolist() for b in batches] == first  # the same epoch again, until set_epoch moves on
    batches.set_epoch(1)
    second = [b.labels.tolist() for b in batches]
    assert first != second  # a fresh permutation each epoch
    generator = torch.Generator().manual_seed(3)  # epoch e's order: the e-th permutation of one seeded generator
    torch.randperm(len(d), generator=generator)
    assert torch.cat([b.labels for b in batches]).tolist() == d.labels[torch.randperm(len(d), generator=generator)].tolist()


def test_same_seed_same_order(image_data):
    a = [b.labels.tolist() for b in memory_batches(image_data, 8, seed=1)]
    b = [b.labels.tolist() for b in memory_batches(image_data, 8, seed=1)]
    c = [b.labels.tolist() for b in memory_batches(image_data, 8, seed=2)]
    assert a == b and a != c


def test_fit_learns_a_separable_task():
    d = make_image_data(n=128, classes=2)
    # make the label visible in the pixels: class 1 images are bright
    imgs = d.images.clone()
    imgs[d.labels == 1] = 255
    imgs[d.labels == 0] = 0
    from dataclasses import replace
    d = replace(d, images=imgs)
    torch.manual_seed(0)
    model = build_model("student-cnn", num_classes=2)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, device="cpu")
    history = fit(model, memory_batches(d, 16, seed=0), cross_entropy_loss, cfg, eval_data=d)
    assert len(history) == 3 and history[-1]["test_accuracy"] == 1.0
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    ev = evaluate(model, d)
    assert ev["accuracy"] == 1.0 and set(ev["per_class_accuracy"]) == {"c0", "c1"}


def test_bf16_training_follows_fp32():
    """bf16 autocast + channels_last trains the same model as fp32 does, to bf16's precision (not just 'finite')."""
    d = make_image_data(n=32)
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model("teacher-cnn")
        history = fit(model, memory_batches(d, 16, channels_last=precision == "bf16"), cross_entropy_loss,
                      TrainConfig(epochs=1, batch_size=16, device="cpu", precision=precision))
        losses[precision] = history[0]["train_loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


@pytest.mark.parametrize("kw", [dict(epochs=0), dict(lr=-1.0), dict(optimizer="rmsprop"), dict(precision="fp8")])
def test_bad_train_config(kw):
    with pytest.raises(ConfigError):
        TrainConfig(**kw)


def test_device_auto_is_cpu_here_and_cuda_refused_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_cached_kd_equals_online_kd(tmp_path, data_dir):
    """The loss and the student's gradients from cached logits equal those from running the teacher live."""
    data = load_dataset("fashion-mnist", "train", data_dir, limit=128)
    torch.manual_seed(0)
    teacher = build_model("teacher-cnn")
    # give BatchNorm non-trivial running statistics, as a trained teacher has
    teacher.train()
    with torch.no_grad():
        teacher(normalize(data.images, data.info.mean, data.info.std))
    config = model_config("teacher-cnn", data.info)
    ckpt = save_checkpoint(tmp_path / "t.pt", teacher, config)
    cache = tmp_path / "c.h5"
    dump_logits(ckpt, cache, dump=DumpConfig(batch_size=32, device="cpu"), data_cfg=DataConfig(data_dir=str(data_dir), limit=128))

    with open_cache(cache) as c:
        cached = torch.from_numpy(c.read(c.align(data.indices.numpy(), info=data.info)))
    live_teacher, _ = load_checkpoint(ckpt)  # eval mode
    batches = memory_batches(data, 32, shuffle=True, seed=0, targets=cached)
    student = build_model("student-cnn")
    T, alpha = 4.0, 0.7
    loss_fn = distillation_loss(T, alpha)
    for batch in list(batches)[:2]:
        student.zero_grad()
        cached_loss = loss_fn(student(batch.images), batch)
        cached_loss.backward()
        cached_grads = [p.grad.clone() for p in student.parameters()]

        student.zero_grad()
        with torch.inference_mode():
            live_logits = live_teacher(batch.images)
        online_loss = kd_loss(student(batch.images), live_logits.clone(), batch.labels, T, alpha)
        online_loss.backward()
        torch.testing.assert_close(batch.teacher_logits, live_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cached_loss, online_loss, rtol=1e-6, atol=1e-6)
        for g_cached, p in zip(cached_grads, student.parameters()):
            torch.testing.assert_close(g_cached, p.grad, rtol=1e-5, atol=1e-7)


def test_strict_fp32_turns_tf32_off_and_restores():
    from kdcache.device import strict_fp32
    before = torch.backends.cudnn.allow_tf32
    with strict_fp32():
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 == before


def test_divergence_watch_stops_a_blow_up_not_a_noisy_run():
    from kdcache.errors import Diverged
    from kdcache.train.loop import DIVERGENCE_FACTOR, DivergenceWatch

    healthy = DivergenceWatch()
    for loss in [2.3, 2.5, 2.2, 2.4, 2.3, 11.3, 4.0, 1.0, 0.1, 0.0]:  # a teacher's early spike (4.7x): not 10x
        healthy.step(loss)
    blowing = DivergenceWatch()
    for loss in [1.1, 1.0, 1.2, 1.1, 1.1, 5.0]:
        blowing.step(loss)
    with pytest.raises(Diverged, match=r"training diverged \(loss 12, 10.9x its 1.1 at the start\); lower --lr"):
        blowing.step(12.0)
    assert DIVERGENCE_FACTOR == 10.0
    with pytest.raises(Diverged, match=r"training diverged \(loss nan\)"):
        DivergenceWatch().step(float("nan"))


def test_a_run_that_blows_up_stops_with_one_line(image_data):
    """On a folder of photos the default lr once took the teacher's loss from 31 to 136 and exited 0 at chance."""
    from kdcache.errors import Diverged

    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=50.0, schedule="constant", device="cpu", precision="fp32")
    with pytest.raises(Diverged) as e:
        fit(build_model("student-cnn"), memory_batches(image_data, 8), cross_entropy_loss, cfg)
    assert str(e.value).startswith("training diverged (loss ") and "lower --lr" in str(e.value)


class TinyBN(torch.nn.Module):
    """A torchvision-like student in miniature: conv, BatchNorm, ReLU, dropout before the classifier."""

    def __init__(self, classes: int = 2, momentum: float | None = 0.1):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4, momentum=momentum)
        self.drop = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))))


def test_stale_batchnorm_is_told_apart_by_steps_and_momentum():
    from kdcache.train.batchnorm import batchnorm_updates, is_stale

    assert is_stale(TinyBN(), 4) and is_stale(TinyBN(), 43) and not is_stale(TinyBN(), 44)  # 0.9**44 < 1%
    assert is_stale(TinyBN(momentum=0.01), 458) and not is_stale(TinyBN(momentum=0.01), 459)  # MobileNetV3's
    assert is_stale(TinyBN(momentum=None), 10_000)  # a plain average over every step since the start
    assert not is_stale(build_model("teacher-cnn"), 469)  # Fashion-MNIST at batch 128: left as it was
    assert not is_stale(build_model("student-cnn"), 1) and batchnorm_updates(build_model("student-cnn")) is None


def test_settle_batchnorm_averages_the_batches_and_touches_nothing_else():
    from kdcache.train.batchnorm import settle_batchnorm

    torch.manual_seed(0)
    model = TinyBN().train()
    batches = [type("B", (), {"images": torch.randn(8, 1, 6, 6) * 3 + k})() for k in range(3)]
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    rng = torch.get_rng_state()
    assert settle_batchnorm(model, batches) == 3
    with torch.no_grad():  # the plain average of each batch's per-channel mean
        means = torch.stack([model.conv(b.images).mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(model.bn.running_mean, means, atol=1e-5) and int(model.bn.num_batches_tracked) == 3
    assert model.bn.momentum == 0.1 and model.training and model.drop.training  # modes and momentum restored
    assert torch.equal(torch.get_rng_state(), rng)  # dropout was off: nothing drawn
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


def test_fit_settles_batchnorm_that_few_steps_leave_stale():
    """Two steps an epoch: eval mode gets the statistics of the final weights, not a 0.9**2 mix with the start."""
    d = make_image_data(n=64, classes=2)
    torch.manual_seed(0)
    model = TinyBN()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, device="cpu")
    batches = memory_batches(d, 32, seed=0)
    fit(model, batches, cross_entropy_loss, cfg)
    assert int(model.bn.num_batches_tracked) == 2  # one settling pass over the last epoch's 2 batches, not 2 x 2 steps
    with torch.no_grad():
        means = torch.stack([model.conv(b.images).mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(model.bn.running_mean, means, atol=1e-5)
