import pytest
import torch

from kdcache.errors import CheckpointError, ConfigError
from kdcache.train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from kdcache.train.models import build_model

CONFIG = {"arch": "student-cnn", "in_channels": 1, "num_classes": 10, "image_size": [28, 28],
          "dataset": "fashion-mnist", "mean": [0.286], "std": [0.353], "class_names": [str(i) for i in range(10)]}


def test_round_trip_with_weights_only(tmp_path):
    model = build_model("student-cnn")
    p = save_checkpoint(tmp_path / "s.pt", model, CONFIG)
    raw = torch.load(p, weights_only=True)  # plain torch can read it safely
    assert raw["config"]["arch"] == "student-cnn"
    loaded, config = load_checkpoint(p)
    assert config == CONFIG and not loaded.training
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_refuses_existing_output(tmp_path):
    p = save_checkpoint(tmp_path / "s.pt", build_model("student-cnn"), CONFIG)
    with pytest.raises(ConfigError, match="--overwrite"):
        save_checkpoint(p, build_model("student-cnn"), CONFIG)


def test_wrong_arch_is_refused(tmp_path):
    p = save_checkpoint(tmp_path / "s.pt", build_model("student-cnn"), CONFIG)
    with pytest.raises(CheckpointError, match="'student-cnn' model, but 'teacher-cnn'"):
        load_checkpoint(p, expect_arch="teacher-cnn")


def test_weights_that_do_not_fit_the_declared_arch(tmp_path):
    p = save_checkpoint(tmp_path / "s.pt", build_model("student-cnn"), dict(CONFIG, arch="teacher-cnn"))
    with pytest.raises(CheckpointError, match="do not match architecture 'teacher-cnn'"):
        load_checkpoint(p)


class Boom:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/kdcache-pwned",))


def test_malicious_pickle_is_refused_not_run(tmp_path):
    import os
    marker = "/tmp/kdcache-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    p = tmp_path / "evil.pt"
    torch.save({"format": "kdcache-checkpoint", "config": CONFIG, "state_dict": {}, "x": Boom()}, p)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(p)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated"])
def test_garbage_is_a_checkpoint_error(tmp_path, content):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError):
        read_checkpoint(p)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")


EVIL_MODULE = """
import pathlib
pathlib.Path("IMPORTED").write_text("module code ran")

def make(**kwargs):
    pathlib.Path("CALLED").write_text(repr(kwargs))
    raise SystemExit("never reached in a test that passes")
"""

GOOD_MODULE = """
from torch import nn

def build(num_classes, width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, num_classes))
"""


@pytest.fixture
def modules(tmp_path, monkeypatch):
    import sys

    (tmp_path / "evil_factory_mod.py").write_text(EVIL_MODULE)
    (tmp_path / "good_factory_mod.py").write_text(GOOD_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("evil_factory_mod", "good_factory_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def factory_checkpoint(path, factory, kwargs, model=None):
    from kdcache.train.models import ModelSpec

    model = model if model is not None else torch.nn.Linear(2, 2)
    return save_checkpoint(path, model, dict(CONFIG, **ModelSpec(factory=factory, kwargs=kwargs).record()))


def test_a_factory_checkpoint_is_rebuilt_only_with_its_factory_named(modules):
    from kdcache.train.models import ModelSpec

    spec = ModelSpec(factory="good_factory_mod:build", kwargs={"width": 6})
    model = spec.build(1, 10, (28, 28))
    p = factory_checkpoint(modules / "s.pt", spec.factory, {"width": 6}, model)
    with pytest.raises(CheckpointError, match="pass --student-factory good_factory_mod:build to evaluate if you trust"):
        load_checkpoint(p)
    loaded, config = load_checkpoint(p, factory="good_factory_mod:build")
    assert config["factory_kwargs"] == {"width": 6} and loaded[1].out_features == 6
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    plain = save_checkpoint(modules / "plain.pt", build_model("student-cnn"), CONFIG)
    with pytest.raises(CheckpointError, match="built-in 'student-cnn' model, not one made by good_factory_mod:build"):
        load_checkpoint(plain, factory="good_factory_mod:build")


def test_a_checkpoint_naming_another_callable_is_refused_and_nothing_runs(modules):
    """A checkpoint is data: one naming any importable callable must not make kdcache import or call it."""
    import sys

    evil = factory_checkpoint(modules / "evil.pt", "evil_factory_mod:make", {"cmd": "rm -rf ~"})
    for consent in (None, "good_factory_mod:build"):  # not named at all / the user named another factory
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(evil, factory=consent)
        assert "evil_factory_mod:make" in str(e.value)
    system = factory_checkpoint(modules / "system.pt", "os:system", {"command": "touch PWNED"})
    with pytest.raises(CheckpointError, match="made by os:system, not by good_factory_mod:build"):
        load_checkpoint(system, factory="good_factory_mod:build")
    assert "evil_factory_mod" not in sys.modules
    assert not (modules / "IMPORTED").exists() and not (modules / "CALLED").exists() and not (modules / "PWNED").exists()


def test_a_torchvision_factory_checkpoint_rebuilds_the_same_model(tmp_path):
    """The record (factory + kwargs) is enough to rebuild resnet18 for the data it was trained on."""
    from kdcache.identity import DatasetInfo
    from kdcache.train.checkpoint import model_config
    from kdcache.train.models import ModelSpec

    info = DatasetInfo(name="tiny-rgb", split="train", num_samples=8, class_names=tuple("abcde"), in_channels=3,
                       image_size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, fingerprint="0" * 64)
    spec = ModelSpec(factory="torchvision.models:resnet18", kwargs={"zero_init_residual": True})
    torch.manual_seed(0)
    model = spec.build(info.in_channels, info.num_classes, info.image_size)
    p = save_checkpoint(tmp_path / "r.pt", model, model_config(spec, info))
    loaded, config = load_checkpoint(p, factory="torchvision.models:resnet18")
    assert config["factory"] == "torchvision.models:resnet18"
    assert config["factory_kwargs"] == {"zero_init_residual": True} and config["num_classes"] == 5
    x = torch.randn(4, 3, 32, 32)
    out = loaded(x)
    assert out.shape == (4, 5) and torch.equal(out, model.eval()(x))
