"""Training that resumes after a kill, and SIGTERM handled like Ctrl-C (issue 17, part 3).

Every run here is a real `python -m kdcache` process: the point is what survives a SIGKILL
or a SIGTERM from outside, which an in-process CliRunner cannot show.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import assert_error, run_cli

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def kdcache(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdcache", *map(str, args)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(proc: subprocess.Popen, found, timeout: float = 60):
    """Poll until ``found()`` returns something truthy; fail if the process ends or time runs out first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        hit = found()
        if hit:
            return hit
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} first: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("timed out")


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, different


def killed_and_resumed(tmp_path: Path, command: list, epochs: int) -> tuple[Path, dict]:
    """Run ``command --out K``, SIGKILL it once its first resume state is written, run it again to the end.

    Returns the checkpoint and the state as the kill left it.
    """
    out = tmp_path / "killed" / "m.pt"
    state = out.with_name(".m.pt.resume.pt")
    proc = kdcache(*command, "--out", out)
    wait_for(proc, state.exists)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = torch.load(state, map_location="cpu", weights_only=True)  # tensors and plain values only
    assert 1 <= left["epoch"] < epochs and not out.exists()
    code, _, err = finish(kdcache(*command, "--out", out))
    assert code == 0, err
    assert not state.exists() and not list(out.parent.glob(".*")), list(out.parent.iterdir())  # no state, no temp
    history = json.loads(out.with_name("m.metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    # the first epochs were not trained again: their rows (timings included) are the killed run's
    assert history[:left["epoch"]] == left["history"]
    return out, left


def student_command(data_dir, *more) -> list:
    return ["train-student", "--data-dir", data_dir, "--limit", 512, "--eval-limit", 100, "--epochs", 3,
            "--batch-size", 64, "--alpha", 0, "-q", *more]


def test_student_killed_after_an_epoch_resumes_to_the_same_weights(tmp_path, data_dir):
    command = student_command(data_dir)
    whole = tmp_path / "whole" / "m.pt"
    code, _, err = finish(kdcache(*command, "--out", whole))
    assert code == 0, err
    resumed, _ = killed_and_resumed(tmp_path, command, epochs=3)
    assert_same_weights(resumed, whole)


def test_teacher_killed_after_an_epoch_resumes_to_the_same_weights(tmp_path, data_dir):
    command = ["train-teacher", "--arch", "teacher-cnn", "--data-dir", data_dir, "--limit", 256, "--eval-limit", 100,
               "--epochs", 2, "--batch-size", 64, "--precision", "fp32", "-q"]
    whole = tmp_path / "whole" / "m.pt"
    code, _, err = finish(kdcache(*command, "--out", whole))
    assert code == 0, err
    resumed, _ = killed_and_resumed(tmp_path, command, epochs=2)
    assert_same_weights(resumed, whole)


def test_a_state_of_another_request_is_refused_naming_what_differs(tmp_path, data_dir):
    out = tmp_path / "s.pt"
    state = tmp_path / ".s.pt.resume.pt"
    proc = kdcache(*student_command(data_dir), "--lr", "0.02", "--out", out)
    wait_for(proc, state.exists)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    line, = assert_error(run_cli(*student_command(data_dir), "--lr", "0.05", "--out", out, ok=False),
                         "lr 0.02", "asks for lr 0.05", "--overwrite", str(state))
    assert "limit" not in line  # only what differs is named
    assert_error(run_cli(*student_command(data_dir), "--lr", "0.05", "--resume", "--overwrite", "--out", out,
                         ok=False), "--resume", "--overwrite")
    assert state.exists()  # a refusal discards nothing
    run_cli(*student_command(data_dir), "--lr", "0.05", "--epochs", 1, "--overwrite", "--out", out)
    assert out.exists() and not state.exists()  # --overwrite started over (one epoch) and finished


def test_resume_without_a_state_is_one_line(tmp_path, data_dir):
    out = tmp_path / "s.pt"
    assert_error(run_cli(*student_command(data_dir), "--resume", "--out", out, ok=False),
                 "--resume", "no resume state", str(tmp_path / ".s.pt.resume.pt"))
    assert list(tmp_path.iterdir()) == []


def test_sigterm_stops_training_like_ctrl_c_and_keeps_the_state(tmp_path, data_dir):
    out = tmp_path / "s.pt"
    state = tmp_path / ".s.pt.resume.pt"
    proc = kdcache(*student_command(data_dir), "--out", out)
    wait_for(proc, state.exists)
    proc.send_signal(signal.SIGTERM)
    code, stdout, err = finish(proc)
    assert code == 143, (code, err)
    lines = (stdout + err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: stopped (SIGTERM); "), lines
    assert "run the same command again to resume" in lines[0] and str(state) in lines[0]
    assert state.exists() and not out.exists() and not list(tmp_path.glob(".*tmp-*"))


def test_sigterm_during_dump_logits_removes_its_temp_file(tmp_path, data_dir, teacher_ckpt):
    out = tmp_path / "c.h5"
    proc = kdcache("dump-logits", "--teacher", teacher_ckpt, "--data-dir", data_dir, "--batch-size", 256,
                   "--out", out, "-q")
    wait_for(proc, lambda: list(tmp_path.glob(".c.h5.tmp-*")))
    time.sleep(0.2)  # inside the writing loop
    proc.send_signal(signal.SIGTERM)
    code, stdout, err = finish(proc)
    assert code == 143, (code, err)
    lines = (stdout + err).strip().splitlines()
    assert lines == ["Error: stopped (SIGTERM)"], lines
    assert list(tmp_path.iterdir()) == []  # no temp file, nothing at --out


def test_a_torchrun_job_killed_after_an_epoch_resumes_to_the_same_weights(tmp_path, data_dir):
    """Under torchrun rank 0 writes the state and every rank loads it: the job ends where an unbroken one does."""
    from conftest import torchrun

    command = ["train-student", "--data-dir", data_dir, "--limit", 2048, "--eval-limit", 100, "--epochs", 3,
               "--batch-size", 32, "--alpha", 0, "-q"]
    whole, out = tmp_path / "whole.pt", tmp_path / "k" / "m.pt"
    r = torchrun(*command, "--out", whole)
    assert r.returncode == 0, r.stderr[-3000:]
    state = out.with_name(".m.pt.resume.pt")
    job = torchrun(*command, "--out", out, background=True)
    wait_for(job, state.exists, timeout=120)
    ranks = children(job.pid)  # torchrun starts each rank in a session of its own: kill them by id
    assert len(ranks) == 2, ranks
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)  # no cleanup
    os.killpg(job.pid, signal.SIGKILL)
    job.communicate()
    left = torch.load(state, weights_only=True)
    assert 1 <= left["epoch"] < 3 and not out.exists()
    r = torchrun(*command, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not state.exists()
    history = json.loads(out.with_name("m.metrics.json").read_text())["history"]
    assert history[:left["epoch"]] == left["history"]  # resumed, not started over
    assert_same_weights(out, whole)


def children(pid: int) -> list[int]:
    """The ids of ``pid``'s child processes (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_sigterm_after_the_last_epoch_still_points_at_the_state(tmp_path, data_dir, monkeypatch):
    """Stopped during the final evaluation (every epoch saved): the message still says how to go on."""
    import kdcache.jobs.training as jobs

    def stopped(*a, **k):
        raise KeyboardInterrupt()
    monkeypatch.setattr(jobs, "evaluate", stopped)
    out = tmp_path / "s.pt"
    r = run_cli(*student_command(data_dir), "--epochs", 1, "--out", out, ok=False)
    assert r.exit_code == 130, (r.exit_code, r.output)
    assert r.output.strip().splitlines() == [f"Error: stopped (Ctrl-C); 1 epoch of 1 saved in {tmp_path / '.s.pt.resume.pt'}; "
                                             "run the same command again to resume"]
    monkeypatch.undo()
    run_cli(*student_command(data_dir), "--epochs", 1, "--resume", "--out", out)  # nothing left to train: saves
    assert out.exists() and not (tmp_path / ".s.pt.resume.pt").exists()


def test_a_resumed_run_says_so_and_times_the_epochs_it_ran(tmp_path, data_dir, monkeypatch):
    """Stopped in epoch 2 of 2 (epoch 1 saved): the next run says where it resumes and that its time is 1 epoch's."""
    import kdcache.train.loop as loop

    evaluate, calls = loop.evaluate, []

    def stopped_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt()
        return evaluate(*a, **k)
    monkeypatch.setattr(loop, "evaluate", stopped_in_epoch_2)
    out, state = tmp_path / "s.pt", tmp_path / ".s.pt.resume.pt"
    command = [c for c in student_command(data_dir) if c != "-q"] + ["--epochs", 2, "--limit", 256]  # last wins
    assert run_cli(*command, "--out", out, ok=False).exit_code == 130 and state.exists()
    monkeypatch.undo()
    r = run_cli(*command, "--out", out)
    lines = r.output.strip().splitlines()
    assert f"resuming from epoch 1 of 2 (state {state}); 1 epoch to run" in lines
    summary = lines[-1]
    assert summary.startswith("student student-cnn (labels only): test accuracy ")
    assert ", 2 epochs (resumed from epoch 1) at fp32" in summary and "; 1 epoch run now in " in summary, summary
    metrics = json.loads((tmp_path / "s.metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs_run"] == 1
    assert metrics["config"]["resumed_from_epoch"] == 1
