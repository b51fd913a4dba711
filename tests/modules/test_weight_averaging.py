"""Lightning's EMAWeightAveraging / WeightAveraging on our modules when the model is built from the data.

The callback deep-copies the module in its own ``setup``, which Lightning runs before the module's: our modules
used to build the HF model only in theirs (from the datamodule's labels or tokenizer), so the copy had no
parameters and the callback averaged nothing, silently. Our modules now build it in ``configure_model`` too,
which the callback calls first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import EMAWeightAveraging

from lit_llm.datamodules import TextClassificationDataModule, TextCorpusDataModule, TokenClassificationDataModule
from lit_llm.modules import CausalLanguageModel, MaskedLanguageModel, SequenceClassifier, TokenClassifier

CONLL = "john\tB-PER\nlives\tO\nin\tO\nparis\tB-LOC\n\nmary\tB-PER\nloved\tO\nlondon\tB-LOC\n\n" * 4
DOCS = [f"the film {i} was good and the story of mary in london was great . the end" for i in range(24)]


def _case(kind: str, tmp_path: Path, tiny_bert_dir: Path, tokenizer_dir: Path, csvs: dict[str, Path]):
    """(module with no model yet, datamodule) for one of our four modules."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if kind == "sequence":
        data = TextClassificationDataModule(str(tokenizer_dir), train_file=str(csvs["train"]), batch_size=8)
        return SequenceClassifier(str(tiny_bert_dir)), data
    if kind == "token":
        conll = tmp_path / "train.conll"
        conll.write_text(CONLL)
        return TokenClassifier(str(tiny_bert_dir)), TokenClassificationDataModule(str(tokenizer_dir),
                                                                                   train_file=str(conll),
                                                                                   batch_size=2)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    data = TextCorpusDataModule(data_files=str(corpus), tokenizer=str(tokenizer_dir), batch_size=4, block_size=32,
                                cache_dir=str(tmp_path / "hf"))
    # From scratch (a config, no tokenizer of its own): the model is built for the datamodule's tokenizer.
    if kind == "masked":
        config = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "intermediate_size": 37, "max_position_embeddings": 64}
        return MaskedLanguageModel(model=config, masking_seed=0, export=False), data
    config = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64}
    return CausalLanguageModel(model=config, export=False), data


def _fit(tmp_path: Path, module, data, callbacks: list) -> dict[str, torch.Tensor]:
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    return {name: value.detach().clone() for name, value in module.model.state_dict().items()}


@pytest.mark.parametrize("kind", ["sequence", "token", "masked", "causal"])
def test_ema_averages_a_model_that_our_module_builds_from_the_data(kind, tmp_path, tiny_bert_dir,
                                                                   tiny_tokenizer_dir, sentiment_csvs):
    module, data = _case(kind, tmp_path / "a", tiny_bert_dir, tiny_tokenizer_dir, sentiment_csvs)
    assert module.model is None  # the case under test: built from the datamodule, not in __init__
    seed_everything(0)
    ema = EMAWeightAveraging(decay=0.5)
    averaged = _fit(tmp_path / "a", module, data, [ema])

    # The copy holds the whole model, updated once per optimizer step.
    assert ema._average_model is not None
    copied = dict(ema._average_model.module.named_parameters())
    assert len(copied) == len(dict(module.named_parameters())) > 0
    assert int(ema._average_model.n_averaged) == 3
    # At train end the callback copies the average into the module: the model the run exports.
    for name, value in module.named_parameters():
        assert torch.equal(value, copied[name]), name

    module, data = _case(kind, tmp_path / "b", tiny_bert_dir, tiny_tokenizer_dir, sentiment_csvs)
    seed_everything(0)
    plain = _fit(tmp_path / "b", module, data, [])
    assert averaged.keys() == plain.keys()
    assert any(not torch.equal(averaged[name], plain[name]) for name in plain), "the average is the last weights"


def test_load_from_checkpoint_does_not_need_data(tmp_path, tiny_bert_dir, tiny_tokenizer_dir, sentiment_csvs):
    """load_from_checkpoint calls configure_model with no trainer: the checkpoint's labels built the model."""
    module = SequenceClassifier(str(tiny_bert_dir))
    data = TextClassificationDataModule(str(tiny_tokenizer_dir), train_file=str(sentiment_csvs["train"]),
                                        batch_size=8)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = SequenceClassifier.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu", weights_only=True)
    assert loaded.labels == module.labels == ["fresh", "rotten"]
    for (name, value), (_, reference) in zip(loaded.model.state_dict().items(), module.model.state_dict().items(),
                                             strict=True):
        assert torch.equal(value, reference), name


@pytest.mark.slow
def test_the_cli_journey_with_ema_exports_the_average_and_resumes(tmp_path, tiny_bert_dir, sentiment_csvs):
    """`lit-llm fit` with lit_llm.callbacks.EMA (Lightning's EMAWeightAveraging, a faster update) in the config:
    the checkpoints and the fit-end export hold the average, `lit-llm export` turns them into the same model, and
    `--ckpt_path last` resumes."""
    import yaml
    from transformers import AutoModelForSequenceClassification

    from lit_llm.commands.export import load_checkpoint
    from export_helpers import tiny_classifier_config
    from tests.test_export_cli_checkpoints import _export, _fit
    from tests.test_resume import _fit_in_process

    config = tmp_path / "rt.yaml"
    config.write_text(yaml.safe_dump(tiny_classifier_config(tiny_bert_dir, sentiment_csvs, [
        {"class_path": "lit_llm.callbacks.EMA", "init_args": {"decay": 0.5}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"monitor": "val/loss", "save_top_k": 1, "save_last": True}},
    ], max_steps=4, val_check_interval=2)))
    _fit(tmp_path, config)
    run = tmp_path / "runs" / "rt" / "version_0"
    (best,) = [p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    checkpoint = load_checkpoint(best)
    average, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(average[name], current[name]) for name in average), "no averaging happened"

    def weights(directory: Path) -> dict[str, torch.Tensor]:
        return AutoModelForSequenceClassification.from_pretrained(directory).state_dict()

    fit_end = weights(run / "export")  # the fit-end export: the best checkpoint's average
    code, err = _export(best, tmp_path / "exported")
    assert code == 0, err
    exported = weights(tmp_path / "exported")
    for name, value in exported.items():
        assert torch.equal(value, average[f"model.{name}"]), name
        assert torch.equal(value, fit_end[name]), name

    code, out, _ = _fit_in_process(tmp_path, config, "rt", "--ckpt_path", "last", "--trainer.max_steps", "6")
    assert code == 0, out[-3000:]
    resumed = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 6 and "current_model_state" in resumed
