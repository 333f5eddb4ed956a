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
