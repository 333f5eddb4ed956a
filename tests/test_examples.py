"""The README's snippet runs, so it cannot rot (examples/own_training_loop.py runs in test_benchmarks.py, against train-student)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cache_attrs

from kdcache.cache import write_cache
from kdcache.data.datasets import load_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_5k(tmp_path_factory, data_dir):
    """A cache of the first 5,000 training samples (logits from a fixed random linear 'teacher')."""
    d = load_dataset("fashion-mnist", "train", data_dir, limit=5000)
    w = np.random.default_rng(0).normal(0, 0.02, (784, 10)).astype(np.float32)
    logits = (d.images.reshape(len(d), -1).numpy().astype(np.float32) / 255.0 - 0.3) @ w * 40
    folder = tmp_path_factory.mktemp("example")
    return write_cache(folder / "fmnist-train.h5", logits, d.labels, d.indices, d.sample_ids, cache_attrs(d.info))


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def test_readme_snippet_runs(cache_5k, data_dir, tmp_path, monkeypatch, capsys):
    section = readme_section("Use a cache from your own code")
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "the section should hold two python blocks: your dataset, then kdcache's split"
    code, own_split = blocks
    assert "kdcache.CachedDataset" in code and "kdcache.kd_loss" in code and "kdcache.open_cache" in code
    assert "kdcache.make_loader" in own_split and "kdcache.load_dataset" in own_split
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "FashionMNIST").symlink_to(Path(data_dir) / "FashionMNIST")
    (tmp_path / "fmnist-train.h5").symlink_to(cache_5k)
    monkeypatch.chdir(tmp_path)  # the snippet's paths: fmnist-train.h5 and data/
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "LogitCache(" in capsys.readouterr().out
    loss = namespace["loss"]
    assert loss.ndim == 0 and np.isfinite(float(loss.detach()))
    assert len(namespace["data"]) == 5000
    exec(compile(own_split, "README.md", "exec"), namespace)  # the student of the first block, in kdcache's loader
    assert namespace["loss"] is not loss and np.isfinite(float(namespace["loss"].detach()))
    assert len(namespace["loader"]) == 40 and namespace["batch"].images.dtype == torch.float32


def script_commands(path: Path) -> list[str]:
    """The kdcache command lines of an example script, as a reader types them (`$KD` -> `kdcache`, comments dropped)."""
    lines = [line.split("  #")[0].strip() for line in path.read_text().splitlines() if line.startswith("$KD ")]
    return [line.replace("$KD ", "kdcache ", 1) for line in lines]


def test_own_folder_walkthrough_runs_and_is_the_readme(tmp_path):
    """examples/own_folder.sh runs on a folder of mixed photos made here, and the README shows exactly its commands."""
    import json
    import os
    import subprocess
    import sys

    from conftest import make_photo_folder

    script = REPO / "examples" / "own_folder.sh"
    section = readme_section("Your own images")
    for command in script_commands(script):
        assert command in section, f"README's 'Your own images' lacks: {command}"
    root = make_photo_folder(tmp_path / "photos", per_class=(8, 3))
    env = dict(os.environ, EPOCHS="1", KDCACHE=f"{sys.executable} -m kdcache", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", str(script), str(root), str(tmp_path / "work")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert "transform  image files decoded as RGB, shorter side resized to 73 (bilinear, antialiased), centre crop " \
           "64x64" in out
    assert "ok    alignment:" in out and "ok    teacher:" in out
    assert (tmp_path / "work" / "student.pt").is_file() and "imagefolder/test (9 samples)" in out
    assert "student factory:torchvision.models:resnet18 (labels only): test accuracy" in out  # batch 32, settled BN
    assert json.loads((tmp_path / "work" / "resnet18.metrics.json").read_text())["config"]["train"]["batch_size"] == 32


def test_imagefolder_own_model_example_runs(tmp_path):
    """examples/imagefolder_own_model.py, run as a user runs it, on a small generated folder of photos."""
    import os
    import subprocess
    import sys

    from conftest import make_photo_folder

    root = make_photo_folder(tmp_path / "photos", per_class=(4, 1))
    out = tmp_path / "cache.h5"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "imagefolder_own_model.py"), str(root / "train"),
                           "--out", str(out), "--size", "32"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})  # this checkout's kdcache
    assert proc.returncode == 0, proc.stderr
    assert "cached 12 x 3 teacher logits (4 views each)" in proc.stdout and out.exists()
    import kdcache

    with kdcache.open_cache(out) as cache:  # random-resized crops of each image, stored as fractions of it
        policy = cache.meta.view_policy
        assert cache.meta.num_views == 4 and (policy["name"], policy["version"]) == ("crop-flip", 2)
        boxes = cache.read_view_params()[..., :4]
        assert (boxes > 0).any() and (boxes <= 1).all() and (boxes >= 0).all()


def test_readme_jobs_snippet_runs(data_dir, tmp_path, monkeypatch, capsys):
    """The README's jobs-from-Python block runs as printed, at a size for tests (its limit shrunk, on CPU)."""
    import json

    section = readme_section("kdcache's jobs from Python")
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section should hold one python block"
    code = blocks[0]
    assert "DataConfig(limit=5000)" in code and "TrainConfig(epochs=3)" in code
    code = code.replace("DataConfig(limit=5000)", "DataConfig(limit=300, eval_limit=200)")
    code = code.replace("TrainConfig(epochs=3)", "TrainConfig(epochs=3, device='cpu')")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "FashionMNIST").symlink_to(Path(data_dir) / "FashionMNIST")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    accuracy = float(capsys.readouterr().out.strip().splitlines()[-1])
    student = json.loads((tmp_path / "runs" / "student.metrics.json").read_text())
    assert accuracy == student["test"]["accuracy"] and 0.2 < accuracy <= 1.0  # a 300-image student beats chance (0.1)
    job = student["config"]["job_config"]
    assert job["distill"]["caches"] == ["runs/train.h5"] and job["distill"]["temperature"] == 4.0
    with namespace["kdcache"].open_cache("runs/train.h5") as cache:
        assert cache.meta.topk == 5 and len(cache) == 300


def test_dict_dataset_example_runs_and_is_the_readme(tmp_path):
    """examples/dict_dataset.py runs as a user runs it, and the README's dict-items block is its marked part."""
    import os
    import subprocess
    import sys
    import textwrap

    script = REPO / "examples" / "dict_dataset.py"
    marked = textwrap.dedent(script.read_text().split("    # --- README\n")[1])
    assert f"```python\n{marked}```" in readme_section("Your own images")
    out = tmp_path / "dicts.h5"
    proc = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "cached 16 x 2 teacher logits of dict items" in proc.stdout
    assert "checked index, label, class names, content id" in proc.stdout, proc.stdout


def test_hf_dataset_walkthrough_runs_and_is_the_readme(tmp_path):
    """examples/hf_dataset.sh runs on a DatasetDict saved with save_to_disk (made here from a folder of mixed photos),
    and the README's Hugging Face subsection shows exactly its commands."""
    import os
    import subprocess
    import sys

    datasets = pytest.importorskip("datasets")
    from conftest import make_photo_folder

    script = REPO / "examples" / "hf_dataset.sh"
    section = readme_section("Your own images").split("### Your data as Hugging Face datasets")[1]
    for command in script_commands(script):
        assert command in section, f"README's Hugging Face subsection lacks: {command}"
    root = make_photo_folder(tmp_path / "photos", per_class=(8, 3))
    classes = sorted(p.name for p in (root / "train").iterdir())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    splits = {}
    for split in ("train", "test"):
        files = [(f, k) for k, c in enumerate(classes) for f in sorted((root / split / c).rglob("*")) if f.is_file()]
        splits[split] = datasets.Dataset.from_dict(
            {"image": [{"bytes": f.read_bytes(), "path": f.name} for f, _ in files], "label": [k for _, k in files]},
            features=features)
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "ds"))
    env = dict(os.environ, EPOCHS="1", KDCACHE=f"{sys.executable} -m kdcache", PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", str(script), str(tmp_path / "ds"), str(tmp_path / "work")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert "source     hf (Hugging Face dataset), image column 'image', label column 'label'; rows keyed by image " \
           "bytes" in out
    assert "ok    alignment: all 24 rows match hf/train" in out and "ok    teacher:" in out
    assert (tmp_path / "work" / "student.pt").is_file() and "on hf/test (9 samples)" in out


def test_hf_dataset_example_runs_and_is_the_readme(tmp_path):
    """examples/hf_dataset.py runs as a user runs it, and the README's Python block of the subsection is its marked
    part."""
    import os
    import subprocess
    import sys
    import textwrap

    pytest.importorskip("datasets")
    script = REPO / "examples" / "hf_dataset.py"
    marked = textwrap.dedent(script.read_text().split("    # --- README\n")[1])
    assert f"```python\n{marked}```" in readme_section("Your own images").split("### Your data as Hugging Face")[1]
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "hf.h5")], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "cached 16 x 2 teacher logits of a Hugging Face dataset" in proc.stdout
    assert "checked content id, label, class names" in proc.stdout, proc.stdout
