import pytest
import torch

from kdcache.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from kdcache.errors import CheckpointError, ConfigError
from kdcache.models import build_model

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
