import pytest
import torch

from kdcache.errors import ConfigError
from kdcache.train.models import ARCHS, build_model, count_parameters


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
    from kdcache.train.models import ModelSpec

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
    from kdcache.train.models import ModelSpec

    with pytest.raises(ConfigError) as e:
        ModelSpec(factory=f"{factories}:{factory}", kwargs=kwargs).build(1, 7, (28, 28))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_kwargs_are_json_and_only_for_factories():
    from kdcache.train.models import ModelSpec, parse_kwargs

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


KWARGS_FACTORY_MODULE = """
from torch import nn

def only_kwargs(**kwargs):
    # like torchvision's builders: forwards **kwargs to a class that takes num_classes only
    return Net(**kwargs)

class Net(nn.Sequential):
    def __init__(self, num_classes=10):
        super().__init__(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

def seen(num_classes, in_channels, **kwargs):
    seen.calls.append(dict(kwargs, num_classes=num_classes, in_channels=in_channels))
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

seen.calls = []
"""


@pytest.fixture
def kwargs_factories(tmp_path, monkeypatch):
    import sys

    (tmp_path / "team_kwargs_factories_m.py").write_text(KWARGS_FACTORY_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "team_kwargs_factories_m", raising=False)
    return "team_kwargs_factories_m"


@pytest.mark.parametrize("builder", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_builders_work_as_factories_unchanged(builder):
    """Their **kwargs reach a class without in_channels/image_size; num_classes still comes from the data."""
    from kdcache.train.models import ModelSpec

    for option in ("--student-factory", "--teacher-factory"):
        torch.manual_seed(0)
        model = ModelSpec(factory=f"torchvision.models:{builder}", option=option).build(3, 5, (32, 32))
        assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_teacher_factory_path_builds_a_torchvision_model():
    from kdcache.train.models import build_from_factory

    model = build_from_factory("torchvision.models:resnet18", num_classes=5, in_channels=3, image_size=(32, 32))
    assert model.fc.out_features == 5 and model.conv1.in_channels == 3


def test_only_explicitly_named_automatic_args_are_passed_and_null_leaves_one_out(kwargs_factories):
    import sys

    from kdcache.train.models import ModelSpec

    model = ModelSpec(factory=f"{kwargs_factories}:only_kwargs").build(3, 5, (32, 32))
    assert model[-1].out_features == 5  # num_classes through **kwargs, in_channels/image_size not
    model = ModelSpec(factory=f"{kwargs_factories}:only_kwargs", kwargs={"num_classes": None})
    with pytest.raises(ConfigError, match=r"returns \(2, 10\) for a batch of 2, expected \(2, 5\)"):
        model.build(3, 5, (32, 32))  # null: the factory's default of 10 applies
    ModelSpec(factory=f"{kwargs_factories}:seen", kwargs={"width": 2}).build(1, 5, (32, 32))
    calls = sys.modules[kwargs_factories].seen.calls
    assert calls == [{"width": 2, "num_classes": 5, "in_channels": 1}]  # named: passed; image_size is not named
    ModelSpec(factory=f"{kwargs_factories}:seen", kwargs={"in_channels": 1}).build(1, 5, (32, 32))
    assert calls[-1]["in_channels"] == 1  # the user's value wins (and equals the data's here)


def test_a_factory_that_refuses_an_automatic_arg_says_how_to_leave_it_out(kwargs_factories, tmp_path):
    (tmp_path / "team_no_classes_m.py").write_text(
        "from torch import nn\n\ndef build(**kwargs):\n    return nn.Linear(2, 2, **kwargs)\n")
    from kdcache.train.models import ModelSpec

    with pytest.raises(ConfigError) as e:
        ModelSpec(factory="team_no_classes_m:build").build(1, 5, (28, 28))
    assert "unexpected keyword argument 'num_classes'" in str(e.value)
    assert str(e.value).endswith('add {"num_classes": null} to its keyword arguments to leave num_classes out')


def test_a_channel_mismatch_is_one_line_that_says_what_to_do():
    from kdcache.train.models import ModelSpec

    with pytest.raises(ConfigError) as e:
        ModelSpec(factory="torchvision.models:resnet18").build(1, 5, (32, 32))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("model from torchvision.models:resnet18 expects 3-channel inputs, but the data has 1 channel(s)")
    assert "build the model for 1 channel(s)" in message and "use 3-channel images" in message
