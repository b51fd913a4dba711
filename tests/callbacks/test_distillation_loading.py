"""Loading the teacher: hostile checkpoints run no code, a teacher with another tokenizer is refused at fit start,
and the checkpoint `lit-llm fit` wrote is a teacher for a `lit-llm fit` YAML run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from compression_helpers import UserClassifier, loader, trainer
from hostile_checkpoints import payload
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, BertForMaskedLM, BertTokenizer

from lit_llm.callbacks import DistillationTeacher
from lit_llm.modules import MaskedLanguageModel



def _hostile(kind: str, tmp_path: Path, marker: Path) -> object:
    return payload(kind, marker, tmp_path, "hostile_teacher_module")  # tmp_path is on sys.path in these tests


@pytest.mark.parametrize(
    ("kind", "global_name"),
    [("exec", "builtins.exec"), ("eval", "builtins.eval"), ("os.system", "system"),
     ("subprocess.call", "call"), ("__import__", "builtins.__import__")],
)
def test_hostile_teacher_checkpoint_runs_no_code(tmp_path, monkeypatch, kind, global_name):
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / f"marker_{kind}"
    path = tmp_path / "teacher.ckpt"
    weights = {f"model.{k}": v for k, v in UserClassifier().model.state_dict().items()}
    torch.save({"state_dict": weights, "hyper_parameters": {"model": _hostile(kind, tmp_path, marker)}}, path)
    cb = DistillationTeacher(teacher=str(path))
    with pytest.raises(ValueError, match=rf"teacher checkpoint: .*teacher.ckpt is not a readable checkpoint \(it "
                                         rf"needs the unsafe globals \[.*{global_name}.*weights_only=True"):
        trainer(tmp_path, [cb], max_steps=1).fit(UserClassifier(), loader())
    assert not marker.exists()
    # The file really is hostile: unrestricted unpickling (what lit-llm never does) runs its code.
    torch.load(path, weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------------------------ tokenizers
def _swapped_tokenizer(tiny_bert_dir: Path, out: Path) -> Path:
    """The student's tokenizer with two tokens' ids swapped: same size, other vocabulary."""
    vocab = AutoTokenizer.from_pretrained(tiny_bert_dir).get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    i, j = tokens.index("good"), tokens.index("bad")
    tokens[i], tokens[j] = tokens[j], tokens[i]
    BertTokenizer(vocab={tok: k for k, tok in enumerate(tokens)}).save_pretrained(out)
    return out


def _mlm_batches(tiny_bert_dir: Path) -> DataLoader:
    enc = AutoTokenizer.from_pretrained(tiny_bert_dir)(["the movie was good", "a bad film"] * 2, padding=True,
                                                       return_tensors="pt")
    return DataLoader([{"input_ids": ids, "attention_mask": m} for ids, m in zip(enc["input_ids"],
                                                                                   enc["attention_mask"])],
                      batch_size=2)


class PlainMaskedLM(pl.LightningModule):
    """A user's module without a tokenizer attribute (the datamodule has it)."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        self.model = BertForMaskedLM.from_pretrained(model_dir)

    def training_step(self, batch, batch_idx):
        return self.model(**batch, labels=batch["input_ids"]).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TokenizerData(pl.LightningDataModule):
    def __init__(self, tokenizer_dir: Path) -> None:
        super().__init__()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.tokenizer_dir = tokenizer_dir

    def train_dataloader(self) -> DataLoader:
        return _mlm_batches(self.tokenizer_dir)


@pytest.mark.parametrize("where", ["teacher_dir", "teacher_tokenizer", "datamodule"])
def test_teacher_with_another_tokenizer_of_the_same_size(tmp_path, tiny_bert_dir, where):
    teacher_dir = tmp_path / "teacher"
    BertForMaskedLM.from_pretrained(tiny_bert_dir).save_pretrained(teacher_dir)
    swapped = _swapped_tokenizer(tiny_bert_dir, teacher_dir if where != "teacher_tokenizer" else tmp_path / "tok")
    kwargs = {"teacher_tokenizer": str(swapped)} if where == "teacher_tokenizer" else {}
    if where == "teacher_tokenizer":
        AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(teacher_dir)  # would match: the argument wins
    cb = DistillationTeacher(teacher=str(teacher_dir), **kwargs)
    t = trainer(tmp_path, [cb], max_steps=1)
    with pytest.raises(ValueError, match=r"the teacher's tokenizer \(.*\) and the student's \(\d+ tokens\) differ on 2 "
                                         r"tokens \(teacher id vs student id: 'bad': \d+ vs \d+.*same tokenizer"):
        if where == "datamodule":
            t.fit(PlainMaskedLM(tiny_bert_dir), datamodule=TokenizerData(tiny_bert_dir))
        else:
            t.fit(MaskedLanguageModel(model=str(tiny_bert_dir), export=False), _mlm_batches(tiny_bert_dir))
    assert t.global_step == 0


def test_teacher_with_the_same_tokenizer_is_accepted(tmp_path, tiny_bert_dir):
    cb = DistillationTeacher(teacher=str(tiny_bert_dir))  # model + tokenizer dir, compared token by token
    t = trainer(tmp_path, [cb], max_steps=1)
    t.fit(PlainMaskedLM(tiny_bert_dir), datamodule=TokenizerData(tiny_bert_dir))
    assert "train/distill_kd" in t.callback_metrics


# ------------------------------------------------------------------------------------------------ CLI journey
def test_the_checkpoint_lit_llm_fit_wrote_teaches_a_yaml_run(tmp_path, tiny_bert_dir, sentiment_csvs):
    from lit_llm.cli import main

    def config(name: str, callbacks: list[dict[str, Any]]) -> Path:
        cfg = {
            "seed_everything": 0,
            "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "logger": False, "limit_val_batches": 0,
                        "enable_progress_bar": False, "enable_model_summary": False, "callbacks": callbacks},
            "model": {"class_path": "lit_llm.modules.SequenceClassifier",
                      "init_args": {"model": str(tiny_bert_dir), "export": False}},
            "data": {"class_path": "lit_llm.datamodules.TextClassificationDataModule",
                     "init_args": {"tokenizer": str(tiny_bert_dir), "train_file": str(sentiment_csvs["train"]),
                                   "batch_size": 16}},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    assert main(["fit", "--config", str(config("teacher", [])), "--run_root", str(tmp_path / "runs")]) == 0
    (ckpt,) = (tmp_path / "runs" / "teacher").glob("version_0/checkpoints/*.ckpt")
    distill = {"class_path": "lit_llm.callbacks.DistillationTeacher",
               "init_args": {"teacher": str(ckpt), "temperature": 2.0, "alpha": 0.5}}
    seen = tmp_path / "seen_kd.txt"
    record = {"class_path": "test_distillation_loading.RecordKD", "init_args": {"out": str(seen)}}
    assert main(["fit", "--config", str(config("student", [distill, record])),
                 "--run_root", str(tmp_path / "runs")]) == 0
    assert float(seen.read_text()) > 0.0


class RecordKD(pl.Callback):
    """Writes the last logged train/distill_kd (for the CLI journey above)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Path(self.out).write_text(str(trainer.callback_metrics["train/distill_kd"].item()))
