import json

import pytest

from kdcache.errors import ConfigError
from kdcache.files import check_output, write_json


def test_write_json_is_atomic_and_readable(tmp_path):
    p = write_json(tmp_path / "a" / "m.json", {"x": 1})
    assert json.loads(p.read_text()) == {"x": 1}
    assert [f.name for f in p.parent.iterdir()] == ["m.json"]


def test_check_output(tmp_path):
    p = tmp_path / "sub" / "out.pt"
    assert check_output(p, overwrite=False) == p and p.parent.is_dir()
    p.write_text("x")
    with pytest.raises(ConfigError, match="--overwrite"):
        check_output(p, overwrite=False)
    assert check_output(p, overwrite=True) == p
    with pytest.raises(ConfigError, match="directory"):
        check_output(tmp_path, overwrite=True)
