"""`lit-llm plan` through main([...]): table, JSON, the emitted LightningCLI config, and bad flags."""

from __future__ import annotations

import json
import re
import sys

import pytest
import yaml

from lit_llm.planning.cli import main

BASE = ["--task", "mlm", "--seq_len", "128", "--global_batch", "32"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_table_shows_the_recommendation(capsys):
    code, out, _ = _run(capsys, "--model", "bert-base", *BASE, "--hardware", "A100-40GB", "--devices", "4",
                        "--steps", "1000", "--top", "5")
    assert code == 0
    assert "Recommended: ddp bf16-mixed" in out
    assert "weights" in out and "activ." in out and "tokens/s" in out
    assert "fits: peak" in out


def test_json_lists_every_candidate(capsys):
    code, out, _ = _run(capsys, "--model", "gpt2", "--task", "clm", "--seq_len", "1024", "--global_batch", "16",
                        "--hardware", "T4", "--tokens", "1e6", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["model"] == "gpt2" and plan["steps"] == -(-10**6 // (16 * 1024))
    best = plan["recommendation"]
    assert best["fits"] and best["precision"] == "16-mixed"
    assert set(best["memory_gib"]) == {
        "weights", "gradients", "optimizer", "activations", "temporary", "peak", "host", "tensor_peak"
    }
    assert len(plan["candidates"]) > 50 and plan["candidates"][0]["label"] == best["label"]


def test_explicit_dimensions_and_custom_hardware(capsys):
    code, out, _ = _run(capsys, "--arch", "gpt2", "--layers", "4", "--hidden", "256", "--heads", "4", "--vocab",
                        "8000", "--task", "clm", "--seq_len", "256", "--global_batch", "8", "--hardware", "custom",
                        "--memory_gb", "2", "--peak_tflops", "50", "--json")
    assert code == 0
    assert json.loads(out)["model"] == "custom-gpt2-L4-h256"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--model", "bert-huge", *BASE], "unknown model preset 'bert-huge'; presets: bert-base"),
        (["--model", "bert-base", *BASE, "--hardware", "V100"], "unknown hardware preset 'V100'; presets: cpu, T4"),
        (["--model", "bert-base", *BASE, "--tokens", "1e6", "--steps", "10"], "not both"),
        (["--model", "bert-base", *BASE, "--devices", "3"], "global batch 32 does not divide over 3 devices"),
        (["--model", "bert-base", "--layers", "2", *BASE], "give --model 'bert-base' or explicit dimensions"),
        (["--layers", "2", "--hidden", "64", *BASE], "missing: --heads, --vocab"),
        (["--model", "bert-base", *BASE, "--hardware", "custom", "--memory_gb", "8"], "custom needs --peak_tflops"),
    ],
)
def test_bad_flags_exit_2_with_the_reason(capsys, argv, match):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert match in err


def test_nothing_fits_exits_1_with_what_would(capsys):
    code, _, err = _run(capsys, "--model", "llama-7b", "--task", "clm", "--seq_len", "2048", "--global_batch", "8",
                        "--hardware", "A10", "--no_offload")
    assert code == 1
    assert "nothing fits" in err and "What would fit: more devices" in err


def _lightning_parser():
    from lightning.pytorch import LightningDataModule, LightningModule, Trainer
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser()
    parser.add_argument("--seed_everything", type=bool | int, default=True)
    parser.add_lightning_class_args(Trainer, "trainer")
    parser.add_lightning_class_args(LightningModule, "model", subclass_mode=True)
    parser.add_lightning_class_args(LightningDataModule, "data", subclass_mode=True)
    return parser


def test_emitted_fsdp_config_parses_as_a_lightning_cli_config(capsys, tmp_path):
    path = tmp_path / "plan.yaml"
    code, out, _ = _run(capsys, "--model", "gpt2-xl", "--task", "clm", "--seq_len", "1024", "--global_batch", "64",
                        "--hardware", "A10", "--devices", "4", "--steps", "500", "--emit_config", str(path))
    assert code == 0 and f"config written: {path}" in out
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == {"seed_everything", "trainer", "model", "data"}
    assert raw["trainer"]["strategy"]["init_args"]["sharding_strategy"] == "FULL_SHARD"
    assert raw["model"]["init_args"]["model"] == "openai-community/gpt2-xl"
    # class paths are imported and init args checked against the signatures, as `lit-llm fit --config` does
    cfg = _lightning_parser().parse_path(str(path))
    assert cfg.trainer.max_steps == 500 and cfg.trainer.devices == 4
    assert cfg.trainer.strategy.init_args.auto_wrap_policy  # the GPT2Block class, imported
    assert cfg.trainer.callbacks[0].class_path == "lit_llm.callbacks.WarmupSchedule"
    assert cfg.model.class_path == "lit_llm.modules.causal_lm.CausalLanguageModel"
    assert cfg.data.init_args.batch_size * cfg.trainer.accumulate_grad_batches * 4 == 64


def test_emitted_8bit_config_and_no_overwrite(capsys, tmp_path):
    from lit_llm.planning import PlanRequest, emit_config, make_plan, resolve_hardware, resolve_model

    # 8-bit AdamW forced by memory: bert-large on a 6 GiB device
    req = PlanRequest(resolve_model("bert-large"), "classification", 128, 8,
                      resolve_hardware("T4", memory_gib=6.0), num_labels=3)
    report = make_plan(req)
    assert report.best.choice.optimizer_8bit
    path = emit_config(req, report.best, tmp_path / "cls.yaml", data_path="data/train.csv")
    cfg = _lightning_parser().parse_path(str(path))
    assert cfg.model.init_args.optimizer.class_path == "bitsandbytes.optim.AdamW8bit"
    assert cfg.model.class_path == "lit_llm.modules.SequenceClassifier"
    assert cfg.model.init_args.num_labels == 3 and cfg.data.init_args.train_file == "data/train.csv"
    with pytest.raises(FileExistsError, match=r"cls.yaml' already exists; choose a new file name"):
        emit_config(req, report.best, path)
    code, _, err = _run(capsys, "--model", "bert-base", *BASE, "--emit_config", str(path))
    assert code == 2 and "already exists" in err


def test_module_entry_point(tiny_bert_dir, monkeypatch, capsys):
    """``python -m lit_llm.planning.cli ...``: its ``__main__`` branch, run in-process by runpy (as -m does)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["lit_llm.planning.cli", "--model", str(tiny_bert_dir), "--task", "mlm",
                                      "--seq_len", "64", "--global_batch", "8", "--hardware", "cpu", "--json"])
    monkeypatch.delitem(sys.modules, "lit_llm.planning.cli", raising=False)  # runpy warns on a module already run
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("lit_llm.planning.cli", run_name="__main__", alter_sys=True)
    assert exit_.value.code in (0, None)
    best = json.loads(capsys.readouterr().out)["recommendation"]
    assert best["strategy"] == "ddp" and best["micro_batch"] == 8


@pytest.mark.slow
def test_emitted_cpu_config_trains_with_lit_llm_fit(tiny_bert_dir, sentiment_csvs, tmp_path, monkeypatch, capsys):
    """End to end: `lit-llm plan --emit_config` then `lit-llm fit --config` on this CPU, 3 optimizer steps."""
    cli = pytest.importorskip("lit_llm.cli")
    path = tmp_path / "plan.yaml"
    code, _, err = _run(capsys, "--model", str(tiny_bert_dir), "--task", "classification", "--seq_len", "32",
                        "--global_batch", "16", "--micro_batch", "8", "--hardware", "cpu", "--steps", "3",
                        "--data_path", str(sentiment_csvs["train"]), "--emit_config", str(path))
    assert code == 0, err
    assert yaml.safe_load(path.read_text())["trainer"]["accumulate_grad_batches"] == 2
    monkeypatch.chdir(tmp_path)
    assert cli.main(["fit", "--config", str(path), "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                     "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]) == 0


# ---------------------------------------------------------------------------------------------------- flags, --config
def test_kebab_case_flags_still_work_with_a_deprecation_note(capsys):
    code, out, err = _run(capsys, "--model", "bert-base", "--task", "mlm", "--seq-len", "128", "--global-batch=32",
                          "--hardware", "T4", "--steps", "10", "--json")
    assert code == 0 and json.loads(out)["recommendation"]["fits"]
    assert "lit-llm plan: --seq-len is deprecated; use --seq_len" in err
    assert "lit-llm plan: --global-batch is deprecated; use --global_batch" in err


def test_help_shows_snake_case_flags_only(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "--seq_len" in out and "--global_batch" in out and "--config FILE" in out and "--emit_config FILE" in out
    assert not re.search(r"--[a-z0-9]+-[a-z]", out.replace("kebab-case flags (--seq-len)", ""))


def test_config_file_with_the_flag_names_and_command_line_overrides(capsys, tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("model: bert-base\ntask: mlm\nseq_len: 128\nglobal_batch: 32\nhardware: A100-40GB\n"
                    "devices: 4\nsteps: 1000\njson: true\nno_offload: false\nmicro_batch: null\n")
    code, out, _ = _run(capsys, "--config", str(path))
    from_file = json.loads(out)
    code_flags, out_flags, _ = _run(capsys, "--model", "bert-base", *BASE, "--hardware", "A100-40GB", "--devices",
                                    "4", "--steps", "1000", "--json")
    assert code == code_flags == 0
    assert from_file == json.loads(out_flags)  # the same plan as the same options given as flags
    code, out, _ = _run(capsys, "--config", str(path), "--devices", "8")
    assert code == 0 and json.loads(out)["devices"] == 8  # the command line overrides the file


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("seq-len: 128\n", "unknown key 'seq-len'; the keys are the flag names: "),
        ("config: other.yaml\n", "unknown key 'config'"),
        ("json: yes please\n", "json must be true or false, not 'yes please'"),
        ("devices: [1, 2]\n", "devices takes one value, not [1, 2]"),
        ("- a list\n", "must be a mapping of flag names to values (seq_len: 512), not list"),
        ("task: [unclosed\n", "is not valid YAML"),
        ("task: translation\n", "argument --task: invalid choice: 'translation'"),
    ],
)
def test_bad_config_file_exits_2_naming_the_file(capsys, tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as info:
        main(["--config", str(path), "--model", "bert-base", *BASE])
    err = capsys.readouterr().err
    assert info.value.code == 2 and match in err
    if "invalid choice" not in match:
        assert f"--config {str(path)!r}" in err


def test_missing_config_file(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["--config", str(tmp_path / "none.yaml")])
    assert info.value.code == 2 and "none.yaml' does not exist (resolved from" in capsys.readouterr().err
