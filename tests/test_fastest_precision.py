"""``lit-llm fit --fastest_precision true``: the precision this machine runs fastest at full accuracy."""

from __future__ import annotations

import pytest
import torch
import yaml

from lit_llm.cli import LitLLMCLI
from lit_llm.commands import trainer_defaults
from lit_llm.commands.trainer_defaults import fastest_precision
from lit_llm.planning.cpu import parse_cpuinfo
from tests.test_cli import _config


def _cpu(flags: str):
    return lambda path="/proc/cpuinfo": parse_cpuinfo(f"model name\t: test CPU\nflags\t\t: fpu sse2 avx2 {flags}\n")


@pytest.mark.parametrize("flags, expected", [
    ("avx512f amx_bf16 amx_tile", "bf16-mixed"),
    ("avx512f avx512_bf16", "bf16-mixed"),
    ("avx512f", "32-true"),
    ("", "32-true"),
])
def test_a_cpu_gets_bf16_only_with_bf16_matmul_hardware(monkeypatch, flags, expected):
    monkeypatch.setattr("lit_llm.planning.cpu.read_cpuinfo", _cpu(flags))
    precision, why = fastest_precision("cpu")
    assert precision == expected
    assert ("amx_bf16" in why or "avx512_bf16" in why) if flags else "no amx_bf16" in why


def test_a_cpu_without_cpuinfo_keeps_fp32(monkeypatch):
    def missing(path="/proc/cpuinfo"):
        raise ValueError("cpuinfo file '/proc/cpuinfo' does not exist")

    monkeypatch.setattr("lit_llm.planning.cpu.read_cpuinfo", missing)
    assert fastest_precision("cpu")[0] == "32-true"


@pytest.mark.parametrize("bf16, expected", [(True, "bf16-mixed"), (False, "16-mixed")])
def test_a_cuda_gpu_gets_bf16_where_it_has_it_else_fp16_mixed(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Test GPU")
    assert fastest_precision("gpu")[0] == expected
    assert fastest_precision("auto")[0] == expected


def test_another_accelerator_keeps_the_configs_precision():
    assert fastest_precision("mps")[0] is None


def test_fit_with_fastest_precision_trains_in_it_and_records_it_in_the_runs_config(
        tmp_path, tiny_bert_dir, sentiment_csvs, monkeypatch, caplog):
    caplog.set_level("INFO")
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs, max_epochs=1)
    expected, _ = trainer_defaults.fastest_precision("cpu")
    cli = LitLLMCLI(args=["fit", "--config", str(config), "--fastest_precision", "true",
                          "--trainer.precision", "32-true", "--trainer.max_steps", "3"])
    assert cli.trainer.precision == expected  # overrides the config's
    saved = yaml.safe_load((cli.run_dir / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == expected and saved["fastest_precision"] is True

    # The same as a key of the config file, on a CPU with AVX512-BF16.
    monkeypatch.setattr("lit_llm.planning.cpu.read_cpuinfo", _cpu("avx512_bf16"))
    in_file = tmp_path / "fastest.yaml"
    in_file.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "fastest_precision": True}))
    caplog.clear()
    bf16 = LitLLMCLI(args=["fit", "--config", str(in_file), "--trainer.max_steps", "3", "--run_name", "bf16"])
    assert "--fastest_precision: trainer.precision = bf16-mixed (this CPU has avx512_bf16)" in caplog.text
    assert bf16.trainer.precision == "bf16-mixed"
    assert bf16.trainer.global_step == 3

    # --fastest_precision false on the command line wins over the file's true: the config's own precision (fp32)
    off = LitLLMCLI(args=["fit", "--config", str(in_file), "--fastest_precision", "false", "--trainer.max_steps", "3",
                          "--run_name", "off"])
    assert off.trainer.precision == "32-true" and off.trainer.global_step == 3
