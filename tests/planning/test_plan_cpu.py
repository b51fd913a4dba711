"""The CPU as the planner sees it: bf16 hardware from /proc/cpuinfo, the precision it recommends, peaks measured
once and cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_llm.planning import cpu as cpu_module
from lit_llm.planning.cli import main
from lit_llm.planning.cpu import BF16_SPEEDUP, cache_path, cpu_hardware, cpu_peaks, parse_cpuinfo, read_cpuinfo
from lit_llm.planning.presets import hardware_for_device

from tests.planning.cpuinfo_fixtures import CPUINFO, cpuinfo_text


@pytest.mark.parametrize(
    ("kind", "unit", "precision", "described"),
    [
        ("epyc_avx2", "none", "32-true", "AMD EPYC 7B13 (4 logical CPUs, AVX2, no bf16 hardware)"),
        ("xeon_amx", "amx_bf16", "bf16-mixed", "(4 logical CPUs, AVX-512, AMX bf16 tiles)"),
        ("epyc_zen4", "avx512_bf16", "bf16-mixed", "AMD EPYC 9B14 (4 logical CPUs, AVX-512, AVX-512 bf16)"),
    ],
)
def test_bf16_hardware_and_the_recommended_precision(kind, unit, precision, described):
    info = parse_cpuinfo(cpuinfo_text(kind, processors=4))
    assert (info.bf16_unit, info.recommended_precision, info.processors) == (unit, precision, 4)
    assert described in info.describe()
    hw = cpu_hardware(info)  # not measured: the table's bf16 ratio for this hardware
    assert hw.peak_tflops["bf16"] == pytest.approx(hw.peak_tflops["32"] * BF16_SPEEDUP[unit])
    assert f"recommended precision {precision}" in hw.notes and "--calibrate" in hw.notes



@pytest.fixture
def cpuinfo_files(tmp_path) -> dict[str, Path]:
    out = {}
    for kind in CPUINFO:
        out[kind] = tmp_path / f"{kind}.cpuinfo"
        out[kind].write_text(cpuinfo_text(kind))
    return out


def test_bad_cpuinfo_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"cpuinfo text has no 'flags' line: .*\(first line: 'hello'\)"):
        parse_cpuinfo("hello\n")
    with pytest.raises(ValueError, match=r"cpuinfo file '.*none.txt' does not exist; on Linux it is /proc/cpuinfo"):
        read_cpuinfo(tmp_path / "none.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("model name : x\n")
    with pytest.raises(ValueError, match=r"bad.txt: cpuinfo text has no 'flags' line"):
        read_cpuinfo(bad)


def test_peaks_are_measured_once_then_read_from_the_cache(_private_cpu_peak_cache, monkeypatch):
    info = parse_cpuinfo(cpuinfo_text("epyc_avx2"))
    assert cpu_peaks(info, measure=False) is None  # nothing cached yet
    peaks = cpu_peaks(info, size=32, threads=1)  # a tiny matmul
    assert set(peaks) == {"32", "bf16"} and all(v > 0 for v in peaks.values())
    path = cache_path()
    assert path == _private_cpu_peak_cache / "cpu_peaks.json"  # $LIT_LLM_CACHE_DIR
    saved = json.loads(path.read_text())
    assert [key.split(" | ")[:2] for key in saved] == [["AMD EPYC 7B13", "1 threads"]]

    def fail(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(cpu_module, "measure_matmul_tflops", fail)
    assert cpu_peaks(info, threads=1) == peaks  # from the cache
    hw = cpu_hardware(info, peaks)
    assert hw.peak_tflops == peaks and "matmul peaks measured: fp32" in hw.notes


def test_a_damaged_cache_is_measured_again(_private_cpu_peak_cache):
    cache_path().parent.mkdir(parents=True)
    cache_path().write_text("{not json")
    peaks = cpu_peaks(parse_cpuinfo(cpuinfo_text("xeon_amx")), size=16, threads=1)
    assert peaks and len(json.loads(cache_path().read_text())) == 1


def _plan(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main(["--task", "classification", "--seq_len", "64", "--global_batch", "8", "--json", *argv])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else {}), out.err


def test_plan_recommends_bf16_on_amx_and_fp32_on_avx2(capsys, tiny_bert_dir, cpuinfo_files):
    code, amx, _ = _plan(capsys, "--model", str(tiny_bert_dir), "--hardware", "cpu", "--cpuinfo",
                         str(cpuinfo_files["xeon_amx"]))
    assert code == 0 and amx["recommendation"]["precision"] == "bf16-mixed"
    assert "AMX bf16 tiles" in amx["hardware_notes"]
    code, avx2, _ = _plan(capsys, "--model", str(tiny_bert_dir), "--hardware", "cpu", "--cpuinfo",
                          str(cpuinfo_files["epyc_avx2"]))
    assert code == 0 and avx2["recommendation"]["precision"] == "32-true"
    assert "no bf16 hardware); recommended precision 32-true" in avx2["hardware_notes"]


def test_calibrate_measures_this_cpu_and_caches_it(capsys, tiny_bert_dir, monkeypatch):
    measure = cpu_module.measure_matmul_tflops
    monkeypatch.setattr(cpu_module, "measure_matmul_tflops", lambda dtype, size, threads: measure(dtype, 32, threads))
    code, plan, _ = _plan(capsys, "--model", str(tiny_bert_dir), "--hardware", "cpu", "--calibrate")
    assert code == 0 and "matmul peaks measured" in plan["hardware_notes"]
    assert cache_path().is_file()
    code, again, _ = _plan(capsys, "--model", str(tiny_bert_dir), "--hardware", "cpu")  # the cache, no flag
    assert again["hardware_notes"] == plan["hardware_notes"]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--hardware", "A10", "--calibrate"], "--cpuinfo and --calibrate describe a CPU; they need --hardware cpu"),
        (["--hardware", "cpu", "--calibrate", "--cpuinfo", "x.txt"], "--calibrate measures this machine"),
        (["--hardware", "cpu", "--cpuinfo", "missing.txt"], "cpuinfo file 'missing.txt' does not exist"),
    ],
)
def test_bad_cpu_flags_exit_2(capsys, argv, match):
    code, _, err = _plan(capsys, "--model", "bert-base", *argv)
    assert code == 2 and match in err


def test_gpu_presets_from_device_names():
    assert hardware_for_device("NVIDIA H200").name == "H200"
    assert hardware_for_device("NVIDIA A100-SXM4-40GB").name == "A100-40GB"
    assert hardware_for_device("NVIDIA A10").name == "A10"
    assert hardware_for_device("Tesla T4").name == "T4"
    assert hardware_for_device("NVIDIA GeForce RTX 4090") is None
