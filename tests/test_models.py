import pytest
import torch

from kdcache.errors import ConfigError
from kdcache.models import ARCHS, build_model, count_parameters


def test_parameter_counts_match_the_design():
    assert count_parameters(build_model("teacher-cnn")) == 322_506
    assert count_parameters(build_model("student-cnn")) == 37_570
    assert count_parameters(build_model("student-convpool")) == 20_586  # two convs + pooling, <= 100k (issue 10)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_output_shape_and_other_inputs(arch):
    assert build_model(arch)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert build_model(arch, in_channels=3, num_classes=5, image_size=(32, 32))(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_initialisation():
    torch.manual_seed(0)
    t = build_model("teacher-cnn")
    bns = [m for m in t.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 4 and all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    convs = [m for m in t.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(torch.all(c.bias == 0) for c in convs)
    w = convs[1].weight  # xavier normal: std = sqrt(2 / (fan_in + fan_out)) = sqrt(2 / (576 + 576))
    assert w.std().item() == pytest.approx((2 / 1152) ** 0.5, rel=0.05)
    fc = build_model("student-cnn").fc
    assert fc.in_features == 3750
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.05) and torch.all(fc.bias == 0)
    assert t.fc.in_features == 6272


def test_unknown_arch_lists_choices():
    with pytest.raises(ConfigError, match="student-cnn, student-convpool, teacher-cnn"):
        build_model("resnet9000")


FACTORY_MODULE = """
import torch
from torch import nn

def build(num_classes, width=4, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(width * 16, num_classes))

def wrong_shape(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes + 1))

def needs_even(num_classes, width):
    if width % 2:
        raise ValueError("width must be even")
    return build(num_classes, width)

def not_a_model():
    return 42
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    import sys

    (tmp_path / "team_factories_m.py").write_text(FACTORY_MODULE)
    monkeypatch.chdir(tmp_path)  # found like `python -m` finds modules: from the current folder
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "team_factories_m", raising=False)
    return "team_factories_m"


def test_a_factory_gets_its_kwargs_and_the_data_shape(factories):
    from kdcache.models import ModelSpec

    spec = ModelSpec(factory=f"{factories}:build", kwargs={"width": 8})
    model = spec.build(in_channels=1, num_classes=7, image_size=(28, 28))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 7) and model[0].out_channels == 8
    assert spec.name == f"factory:{factories}:build"
    assert spec.record() == {"arch": f"factory:{factories}:build", "factory": f"{factories}:build",
                             "factory_kwargs": {"width": 8}}
    assert ModelSpec().record() == {"arch": "student-cnn", "factory": None, "factory_kwargs": None}


@pytest.mark.parametrize("factory,kwargs,needle", [
    ("build", {"depth": 3}, "failed with arguments"),  # an argument the factory does not take
    ("needs_even", {"width": 3}, "ValueError: width must be even"),
    ("wrong_shape", {}, "returns (2, 8) for a batch of 2, expected (2, 7)"),
    ("not_a_model", {}, "returned int, not a torch.nn.Module"),
    ("missing", {}, "has no function 'missing'"),
])
def test_factory_problems_are_one_line_config_errors(factories, factory, kwargs, needle):
    from kdcache.models import ModelSpec

    with pytest.raises(ConfigError) as e:
        ModelSpec(factory=f"{factories}:{factory}", kwargs=kwargs).build(1, 7, (28, 28))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_kwargs_are_json_and_only_for_factories():
    from kdcache.models import ModelSpec, parse_kwargs

    assert parse_kwargs('{"width": 32, "drop": 0.1, "name": "a"}') == {"width": 32, "drop": 0.1, "name": "a"}
    assert parse_kwargs(None) == {} and parse_kwargs("") == {}
    with pytest.raises(ConfigError, match="is not JSON"):
        parse_kwargs("width=32")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_kwargs("[32]")
    with pytest.raises(ConfigError, match="built-in architectures take none"):
        ModelSpec(arch="student-cnn", kwargs={"width": 3})
    with pytest.raises(ConfigError, match="must be JSON values"):
        ModelSpec(factory="m:f", kwargs={"width": object()})
