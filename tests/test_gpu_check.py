"""The GPU check must pass on its first run: its parts are checked here on the CPU (the GPU machine gets one try).

The dry run goes through the same code as the GPU run (the FSDP child process with its timeout included); the unit
tests cover what only a GPU machine would otherwise reach: the H200's peak from the planner's table, a missing
bitsandbytes, a hung child, and where results are written.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return _load("gpu_check")


def test_h200_peak_falls_back_to_the_planner_table(gpu_check):
    # Lightning's table knows "h200 sxm1" / "h200 nvl1" only: torch names the device "NVIDIA H200"
    assert gpu_check.peak_flops("NVIDIA H200", None) == (989e12, "planner preset H200")
    assert gpu_check.peak_flops("NVIDIA A100-SXM4-80GB", None) == (312e12, "planner preset A100-80GB")
    assert gpu_check.peak_flops("NVIDIA H200", 2.0e15) == (2.0e15, "lightning")  # Lightning's value first
    assert gpu_check.peak_flops("AMD EPYC 7B13", None) == (None, "unknown")


def test_missing_bitsandbytes_skips_its_parts_with_a_line(gpu_check, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    import torch

    for part in (gpu_check.int8_check, gpu_check.optimizer_memory):
        result = part(torch.device("cpu"), True)
        assert result["skipped"].startswith("bitsandbytes is not installed here"), result


def test_a_hung_child_part_is_killed_at_its_timeout(gpu_check, tmp_path):
    result = gpu_check.run_child_part("fsdp_smoke", tmp_path, dry_run=True, timeout_s=0.05)
    assert result == {"error": "fsdp_smoke timed out after 0.05 s (killed; a hung collective?)"}


def test_results_go_under_out_when_it_is_set(gpu_check, monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.out_path(None) == tmp_path / "gpu_check"
    assert gpu_check.out_path("x/y") == Path("x/y")
    monkeypatch.delenv("OUT")
    assert gpu_check.out_path(None) == REPO / "benchmarks" / "gpu_check"


def test_measure_planner_finds_lit_llm_without_an_install(tmp_path):
    """`python scripts/measure_planner.py` on a fresh machine: the script puts the repo on sys.path itself.

    ``-S`` skips site-packages (where an editable install would be found), so only the script's own path helps.
    """
    code = (
        "import importlib.util, runpy; before = importlib.util.find_spec('lit_llm'); "
        f"runpy.run_path({str(REPO / 'scripts' / 'measure_planner.py')!r}, run_name='not_main'); "
        "print(before, importlib.util.find_spec('lit_llm').origin)"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["None", str(REPO / "lit_llm" / "__init__.py")]


def test_timed_window_syncs_twice(gpu_check, monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(gpu_check, "_sync", lambda device: calls.append(device))
    timer = gpu_check._StepTimer(torch.device("cuda"), warmup=2, steps=5)
    for step in range(1, 8):
        timer.callback.on_train_batch_end(type("T", (), {"global_step": step})())
    assert len(calls) == 2 and timer.steps == 5 and timer.end >= timer.start > 0


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "gc")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "gc.json").read_text())
    assert result["dry_run"] is True
    assert [r["seq_len"] for r in result["mlm_bf16"]] == [128, 512]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in result["mlm_bf16"])  # no GPU peak on CPU
    assert "needs CUDA" in result["fsdp_smoke"]["skipped"]  # reported by the child process
    assert result["int8_bitsandbytes"]["linears_replaced"] > 0
    assert result["int8_bitsandbytes"]["max_abs_logit_diff_vs_reference"] < 0.05
    assert result["optimizer_memory"]["AdamW"]["bytes_per_param"] == pytest.approx(8.0, abs=0.01)
    assert result["optimizer_memory"]["reduction"] > 0.6
    assert (tmp_path / "gc.md").read_text().startswith("# GPU check")
    assert f"gpu_check: results in {tmp_path / 'gc.json'}" in proc.stdout
