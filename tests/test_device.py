"""Precision: bf16 only where the hardware runs it natively (--precision auto), detected from the CPU flags or GPU."""
from __future__ import annotations

import pytest
import torch

from kdcache import device as kdevice
from kdcache.config import PRECISIONS, STUDENT_TRAIN, TEACHER_TRAIN, TrainConfig
from kdcache.device import (
    autocast,
    bf16_native,
    cpu_flags,
    describe_precision,
    host_cpu_flags,
    resolve_precision,
)
from kdcache.errors import ConfigError

CPU = torch.device("cpu")


def cpuinfo(*flag_lines: str) -> str:
    """/proc/cpuinfo text with one processor block per flags line (x86 layout, tabs and all)."""
    blocks = [f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU\nflags\t\t: {flags}\n"
              f"vmx flags\t: vnmi preemption_timer amx_bf16\nbugs\t\t: spectre_v1\n" for i, flags in enumerate(flag_lines)]
    return "\n".join(blocks)


BASE = "fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 avx fma avx2"
AMX = cpuinfo(*[f"{BASE} avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"] * 2)  # AMX (e.g. Sapphire Rapids)
AVX512_BF16 = cpuinfo(f"{BASE} avx512f avx512bw avx512_bf16", f"{BASE} avx512f avx512bw avx512_bf16")  # AVX512-BF16, no AMX
AVX2_ONLY = cpuinfo(BASE, BASE)  # AVX2, no native bf16


def test_cpu_flags_parses_each_kind_of_machine():
    assert {"amx_bf16", "amx_tile", "avx512_bf16", "avx2"} <= cpu_flags(AMX)
    assert "avx512_bf16" in cpu_flags(AVX512_BF16) and "amx_bf16" not in cpu_flags(AVX512_BF16)
    assert cpu_flags(AVX2_ONLY) == frozenset(BASE.split())  # "vmx flags: ... amx_bf16" is not a CPU flag
    assert cpu_flags("") == frozenset() and cpu_flags("Features\t: fp asimd bf16\n") == frozenset()  # ARM: no "flags"


def test_cpu_flags_keeps_only_what_every_processor_has():
    """A process may run on any processor, so a flag that one lacks does not count."""
    mixed = cpuinfo(f"{BASE} avx512_bf16", BASE)
    assert cpu_flags(mixed) == frozenset(BASE.split())


@pytest.mark.parametrize("text, native", [(AMX, True), (AVX512_BF16, True), (AVX2_ONLY, False)])
def test_bf16_native_on_cpu_follows_the_flags(monkeypatch, text, native):
    monkeypatch.setattr(kdevice, "host_cpu_flags", lambda: cpu_flags(text))
    assert bf16_native(CPU) is native
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")


def test_host_cpu_flags_unreadable_means_no_native_bf16(tmp_path, monkeypatch):
    assert host_cpu_flags(str(tmp_path / "no-cpuinfo")) == frozenset()
    (tmp_path / "cpuinfo").write_text(AVX512_BF16)
    assert "avx512_bf16" in host_cpu_flags(str(tmp_path / "cpuinfo"))
    monkeypatch.setattr(kdevice, "host_cpu_flags", lambda: host_cpu_flags(str(tmp_path / "no-cpuinfo")))
    assert bf16_native(CPU) is False and resolve_precision("auto", CPU) == "fp32"


def test_this_machine_matches_its_cpuinfo():
    """The real detector agrees with the flags in this machine's /proc/cpuinfo."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    expect = bool({"avx512_bf16", "amx_bf16"} & cpu_flags(text))
    assert bf16_native(CPU) is expect
    assert resolve_precision("auto", CPU) == ("bf16" if expect else "fp32")


def test_bf16_native_on_cuda_asks_for_hardware_bf16_not_emulation(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bf16_native(cuda) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert bf16_native(cuda) is False  # only emulated: not native
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert bf16_native(cuda) is True
    assert bf16_native(torch.device("meta")) is False  # any other device: not native


@pytest.mark.parametrize("native", [True, False])
def test_resolve_precision_explicit_values_pass_through(monkeypatch, native):
    monkeypatch.setattr(kdevice, "bf16_native", lambda device: native)
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")


def test_unknown_precision_is_a_config_error_naming_the_choices():
    assert PRECISIONS == ("auto", "fp32", "bf16")
    with pytest.raises(ConfigError, match=r"unknown precision 'fp16'; choose one of: auto, fp32, bf16$"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match=r"unknown precision 'fp8'; choose one of: auto, fp32, bf16$"):
        TrainConfig(precision="fp8")


def test_autocast_refuses_an_unresolved_precision():
    with pytest.raises(ConfigError, match="resolve_precision"):
        autocast(CPU, "auto")
    with autocast(CPU, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")


def test_describe_precision_says_what_auto_chose_and_why(monkeypatch):
    monkeypatch.setattr(kdevice, "bf16_native", lambda device: False)
    assert describe_precision("auto", CPU) == "fp32 (auto: this CPU has no native bf16)"
    assert describe_precision("fp32", CPU) == "fp32"
    assert describe_precision("bf16", CPU) == "bf16 (this CPU has no native bf16: expect it to be slower than fp32)"
    monkeypatch.setattr(kdevice, "bf16_native", lambda device: True)
    assert describe_precision("auto", CPU) == "bf16 (auto: this CPU runs bf16 natively)"
    assert describe_precision("bf16", CPU) == "bf16"


def test_defaults():
    assert TEACHER_TRAIN.precision == "auto"
    assert STUDENT_TRAIN.precision == "fp32"  # see kdcache.config: bf16 never measured for the student
    assert (TrainConfig().precision, TrainConfig().lr, TrainConfig().batch_size) == (None, None, None)  # the role's


def test_a_bare_train_config_gets_the_roles_settings():
    """TrainConfig(epochs=1) handed to a student job trains as a student (lr 0.02, fp32), not at the teacher's
    lr 0.05 (which diverged with KD on 5k); and small data gets a smaller batch."""
    from kdcache.config import default_batch_size
    from kdcache.jobs.training import resolve_train_config

    student = resolve_train_config(TrainConfig(epochs=1, device="cpu"), STUDENT_TRAIN, False, 60_000)
    assert (student.lr, student.precision, student.batch_size) == (0.02, "fp32", 128)
    small = resolve_train_config(TrainConfig(epochs=1, device="cpu"), STUDENT_TRAIN, False, 1000)
    assert small.batch_size == 128  # students keep their batch on small data (kdcache.config says why)
    assert resolve_train_config(TrainConfig(epochs=1, device="cpu"), TEACHER_TRAIN, False, 1000).batch_size == 32
    teacher = resolve_train_config(TrainConfig(epochs=1, device="cpu"), TEACHER_TRAIN, True, 60_000)
    assert (teacher.lr, teacher.precision in ("fp32", "bf16"), teacher.batch_size) == (pytest.approx(0.005), True, 128)
    asked = resolve_train_config(TrainConfig(epochs=1, device="cpu", lr=0.1, batch_size=7, precision="fp32"),
                                 STUDENT_TRAIN, False, 100)
    assert (asked.lr, asked.precision, asked.batch_size) == (0.1, "fp32", 7)
    assert [default_batch_size(128, n) for n in (60_000, 4096, 3968, 1000, 200, 10)] == [128, 128, 64, 32, 32, 32]
    assert resolve_train_config(TrainConfig(), TEACHER_TRAIN, False).batch_size == 128  # no data size: the role's
    assert TrainConfig().settled() == TrainConfig(lr=0.05, batch_size=128, precision="auto")  # fit() with no role
