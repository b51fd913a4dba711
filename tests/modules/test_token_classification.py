"""TokenClassifier on a tiny BERT: labels from the datamodule, metrics, export, reload, predict spans, callbacks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from lit_llm.datamodules import TokenClassificationDataModule
from lit_llm.text.entities import entity_scores
from lit_llm.modules import TokenClassifier
from lit_llm.modules.token_classification import entity_spans
from lit_llm.training.schedules import lr_multiplier

TRAIN = "john\tB-PER\nlives\tO\nin\tO\nnew\tB-LOC\nyork\tI-LOC\n\nmary\tB-PER\nloved\tO\nparis\tB-LOC\n\n" * 3
TEST = "the\tO\nplayer\tO\njohn\tB-PER\n\nlondon\tB-LOC\nis\tO\na\tO\ncity\tO\n\nmary\tB-PER\nand\tO\njohn\tB-PER\n"
LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


@pytest.fixture()
def files(tmp_path) -> dict[str, str]:
    out = {}
    for split, text in (("train", TRAIN), ("validation", TEST), ("test", TEST)):
        path = tmp_path / f"{split}.conll"
        path.write_text(text)
        out[split] = str(path)
    predict = tmp_path / "predict.conll"
    predict.write_text("johnny\nvisited\nnew\nyork\n\nhello\n")
    out["predict"] = str(predict)
    return out


def make_dm(tokenizer_dir, files, **kwargs) -> TokenClassificationDataModule:
    return TokenClassificationDataModule(
        str(tokenizer_dir), train_file=files["train"], validation_file=files["validation"], test_file=files["test"],
        predict_file=files["predict"], batch_size=2, **kwargs,
    )


def make_trainer(tmp_path, max_steps: int = 3, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


class KeywordTagger(torch.nn.Module):
    """Stands in for the HF model: tags fixed token ids (logit 5) and everything else O (logit 1)."""

    def __init__(self, tag_of_token: dict[int, int], n_labels: int) -> None:
        super().__init__()
        self.tag_of_token, self.n_labels = tag_of_token, n_labels
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        logits = torch.zeros(*input_ids.shape, self.n_labels) + self.dummy  # (B, T, C)
        logits[..., 0] = 1.0
        for token, label in self.tag_of_token.items():
            logits[input_ids == token, label] = 5.0
        return SimpleNamespace(logits=logits, loss=None)


def keyword_model(tiny_bert_dir, tokenizer) -> TokenClassifier:
    model = TokenClassifier(str(tiny_bert_dir), labels=LABELS)
    ids = tokenizer.convert_tokens_to_ids
    model.model = KeywordTagger(
        {ids("john"): 3, ids("mary"): 3, ids("new"): 1, ids("york"): 2, ids("paris"): 1}, len(LABELS)
    )
    return model


P_TAG = math.exp(5) / (math.exp(5) + math.exp(1) + 3)  # softmax of the keyword logit


# ---------------------------------------------------------------- fit, test, export, reload
def test_fit_test_export_and_reload(tmp_path, tiny_bert_dir, tiny_tokenizer_dir, files):
    from transformers import AutoConfig, pipeline

    dm = make_dm(tiny_tokenizer_dir, files)
    model = TokenClassifier(str(tiny_bert_dir), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    assert model.model is None  # built in setup, once the labels are known
    trainer = make_trainer(tmp_path)
    trainer.fit(model, datamodule=dm)
    assert model.labels == dm.labels == LABELS
    assert model.hparams["labels"] == LABELS
    assert {"train/loss_step", "val/loss", "val/f1_micro", "val/accuracy"} <= set(trainer.callback_metrics)

    # export: HF config carries the label names, and the HF pipeline runs on it
    export = tmp_path / "export"
    assert model.export_path == export
    config = AutoConfig.from_pretrained(export)
    assert config.id2label == dict(enumerate(LABELS))
    tagger = pipeline("token-classification", model=str(export), device="cpu")
    assert isinstance(tagger("john lives in paris"), list)

    # the logged test metric equals entity_scores on the same predictions, and the report is written
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    gold, pred = [], []
    model.eval()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            preds = model(batch).logits.argmax(-1)
            for p_row, t_row in zip(preds.tolist(), batch["labels"].tolist()):
                keep = [k for k, t in enumerate(t_row) if t != -100]
                gold.append([LABELS[t_row[k]] for k in keep])
                pred.append([LABELS[p_row[k]] for k in keep])
    expected = entity_scores(gold, pred)
    assert metrics["test/f1_micro"] == pytest.approx(expected.micro["f1"])
    assert metrics["test/accuracy"] == pytest.approx(expected.accuracy)
    assert metrics["test/f1_micro_default"] == pytest.approx(entity_scores(gold, pred, mode="default").micro["f1"])
    assert model.report_path == tmp_path / "reports" / "ner_report.txt"  # <run dir>/reports, as every module
    assert "micro avg" in model.report_path.read_text()
    report = json.loads((tmp_path / "reports" / "ner_report.json").read_text())
    assert report["micro"]["f1"] == pytest.approx(expected.micro["f1"])
    assert report["mode"] == "strict" and report["scheme"] == "BIO"

    # a checkpoint reloads without the datamodule: the labels are in its hparams
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded = TokenClassifier.load_from_checkpoint(ckpt)
    assert reloaded.labels == LABELS
    batch = next(iter(dm.test_dataloader()))
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch).logits, model(batch).logits)


def test_export_holds_best_checkpoint_weights(tmp_path, tiny_bert_dir, tiny_tokenizer_dir, files):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from safetensors.torch import load_file

    dm = make_dm(tiny_tokenizer_dir, files)
    model = TokenClassifier(str(tiny_bert_dir), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    # "best" = the earliest step, so the best weights are not the final ones
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="step", mode="min", save_top_k=1)
    trainer = make_trainer(tmp_path, max_steps=-1, max_epochs=3, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(model, datamodule=dm)
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    assert best["global_step"] == 3 and trainer.global_step == 9
    exported = load_file(tmp_path / "export" / "model.safetensors")
    torch.testing.assert_close(exported["classifier.weight"], best["state_dict"]["model.classifier.weight"])


def test_export_dir_with_files_fails_before_training(tmp_path, tiny_bert_dir, tiny_tokenizer_dir, files):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.json").write_text("{}")
    trainer = make_trainer(tmp_path)
    with pytest.raises(FileExistsError, match="already holds files"):
        trainer.fit(TokenClassifier(str(tiny_bert_dir)), datamodule=make_dm(tiny_tokenizer_dir, files))
    assert trainer.global_step == 0


def test_no_labels_anywhere(tmp_path, tiny_bert_dir, tiny_tokenizer_dir, files):
    dm = make_dm(tiny_tokenizer_dir, files)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"TokenClassifier\(labels=None\) takes its labels from trainer\.datamodule"):
        make_trainer(tmp_path).fit(TokenClassifier(str(tiny_bert_dir)), train_dataloaders=dm.train_dataloader())


def test_labels_differing_from_datamodule(tmp_path, tiny_bert_dir, tiny_tokenizer_dir, files):
    model = TokenClassifier(str(tiny_bert_dir), labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    with pytest.raises(ValueError, match="differ from the datamodule's"):
        make_trainer(tmp_path).fit(model, datamodule=make_dm(tiny_tokenizer_dir, files))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": ["B-PER"]}, r"need unique tags including 'O'"),
        ({"labels": ["O", "PER"]}, r"tag 'PER' is not 'O' or"),
        ({"entity_mode": "loose"}, r"entity_mode='loose'"),
        ({"layer_decay": 1.5}, r"layer_decay=1.5"),
    ],
)
def test_bad_arguments(tiny_bert_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenClassifier(str(tiny_bert_dir), **kwargs)


def test_bioes_labels_set_the_scheme(tiny_bert_dir):
    model = TokenClassifier(str(tiny_bert_dir), labels=["O", "B-PER", "I-PER", "E-PER", "S-PER"])
    assert model.tag_scheme == "BIOES" and model.val_entities.scheme == "BIOES"


# ---------------------------------------------------------------- spans
def test_entity_spans_character_offsets():
    text = "John Smith lives in New York"
    offsets = [(0, 4), (5, 10), (11, 16), (17, 19), (20, 23), (24, 28)]
    tags = ["B-PER", "I-PER", "O", "O", "I-LOC", "I-LOC"]  # the I- start is read leniently
    spans = entity_spans(text, offsets, tags, [0.9, 0.7, 1, 1, 0.5, 0.5], "BIO")
    assert spans == [
        {"type": "PER", "text": "John Smith", "start": 0, "end": 10, "score": pytest.approx(0.8)},
        {"type": "LOC", "text": "New York", "start": 20, "end": 28, "score": pytest.approx(0.5)},
    ]


def test_extract_entities_from_raw_text(tiny_bert_dir, tiny_tokenizer):
    model = keyword_model(tiny_bert_dir, tiny_tokenizer)
    text = "  Johnny  visited New York and Paris"
    assert len(tiny_tokenizer.tokenize("johnny")) > 1  # the word's first sub-token carries its tag
    [spans] = model.extract_entities([text])
    assert [(s["type"], s["text"], s["start"], s["end"]) for s in spans] == [
        ("PER", "Johnny", 2, 8),
        ("LOC", "New York", 18, 26),
        ("LOC", "Paris", 31, 36),
    ]
    assert spans[0]["score"] == pytest.approx(P_TAG)
    assert model.extract_entities(["", "hello"]) == [[], []]


def test_predict_returns_spans_per_sentence(tmp_path, tiny_bert_dir, tiny_tokenizer, tiny_tokenizer_dir, files):
    model = keyword_model(tiny_bert_dir, tiny_tokenizer)
    out = make_trainer(tmp_path).predict(model, datamodule=make_dm(tiny_tokenizer_dir, files))
    sentences = [s for batch in out for s in batch]
    assert [[(s["type"], s["text"], s["start"], s["end"]) for s in sent] for sent in sentences] == [
        [("PER", "johnny", 0, 6), ("LOC", "new york", 15, 23)],
        [],
    ]


# ---------------------------------------------------------------- callbacks
def _teacher_dir(tmp_path: Path, tiny_tokenizer) -> str:
    from transformers import BertForTokenClassification

    from conftest import tiny_bert_config

    torch.manual_seed(1)
    config = tiny_bert_config(len(tiny_tokenizer), num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                              label2id={t: i for i, t in enumerate(LABELS)})
    out = tmp_path / "teacher"
    BertForTokenClassification(config).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return str(out)


def _callbacks() -> list[str]:
    import lit_llm.callbacks

    from lightning.pytorch.callbacks import Callback

    exported = {n: getattr(lit_llm.callbacks, n) for n in lit_llm.callbacks.__all__}
    return sorted(n for n, obj in exported.items() if isinstance(obj, type) and issubclass(obj, Callback))


CALLBACK_ARGS = {
    "WarmupSchedule": {"warmup": 2},
    "GlobalBatchSize": {"global_batch_size": 4},
    "Pruning": {"amount": 0.5, "frequency": 1},
    "Int8Quantization": {"report": False},
    "LowRankFactorization": {"rank": 4, "report": False},
    "TransformerThroughputMonitor": {"window_size": 2},
    "DistillationTeacher": {},
    "StopOnNonFiniteLoss": {},
    "ExactResume": {},
    "PlainProgressBar": {"every_n_steps": 1},
    "LoRA": {"rank": 4},
    "StageTimes": {},
    "EMA": {"decay": 0.5},
}


@pytest.mark.parametrize("name", _callbacks())
def test_callback_works_with_token_classifier(name, tmp_path, tiny_bert_dir, tiny_tokenizer, tiny_tokenizer_dir, files):
    import lit_llm.callbacks

    if name not in CALLBACK_ARGS:
        pytest.fail(f"new callback {name}: add its test arguments to CALLBACK_ARGS")
    kwargs = dict(CALLBACK_ARGS[name])
    if name == "DistillationTeacher":
        kwargs["teacher"] = _teacher_dir(tmp_path, tiny_tokenizer)
    callback = getattr(lit_llm.callbacks, name)(**kwargs)
    # labels from the datamodule, as from the CLI: the HF model only exists once the module's setup ran
    model = TokenClassifier(str(tiny_bert_dir), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    dm = make_dm(tiny_tokenizer_dir, files)
    is_bar = isinstance(callback, pl.callbacks.ProgressBar)  # Lightning refuses a bar with the bar switched off
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[callback], limit_val_batches=1, enable_progress_bar=is_bar)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert 0.0 <= metrics["test/f1_micro"] <= 1.0
    if name == "WarmupSchedule":
        # the last optimizer step (global_step 3 of 4, after a 2-step warmup) ran at the schedule's rate
        expected = 0.1 * lr_multiplier(3, warmup_steps=2, total_steps=4, decay="linear")
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected) == pytest.approx(0.05)
    if name == "GlobalBatchSize":
        assert trainer.accumulate_grad_batches == 2
    if name == "Pruning":
        weight = model.model.bert.encoder.layer[0].attention.self.query.weight
        assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.1)
    if name == "Int8Quantization":
        assert callback.quantized  # the test ran on int8 Linear layers
        assert any("quantized" in type(m).__module__ for m in model.model.modules())


def test_learns_a_memorisable_task(tmp_path, tiny_bert_dir, tiny_tokenizer_dir, files):
    files = dict(files, validation=files["train"], test=files["train"])
    dm = make_dm(tiny_tokenizer_dir, files)
    torch.manual_seed(0)
    model = TokenClassifier(str(tiny_bert_dir), optimizer=lambda p: torch.optim.AdamW(p, lr=2e-2))
    trainer = make_trainer(tmp_path, max_steps=12, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert metrics["test/f1_micro"] == 1.0
    assert model.extract_entities(["mary loved paris"])[0] == [
        {"type": "PER", "text": "mary", "start": 0, "end": 4, "score": pytest.approx(1.0, abs=0.2)},
        {"type": "LOC", "text": "paris", "start": 11, "end": 16, "score": pytest.approx(1.0, abs=0.2)},
    ]


def test_predict_with_a_predict_only_datamodule(tmp_path, tiny_bert_dir, tiny_tokenizer, tiny_tokenizer_dir, files):
    model = keyword_model(tiny_bert_dir, tiny_tokenizer)
    dm = TokenClassificationDataModule(str(tiny_tokenizer_dir), predict_file=files["predict"])
    out = make_trainer(tmp_path).predict(model, datamodule=dm)
    assert [s["text"] for s in out[0][0]] == ["johnny", "new york"]


def test_logs_hyperparameters_beside_a_datamodule_with_other_values(tmp_path, tiny_bert_dir, tiny_tokenizer_dir, files):
    # Module tokenizer=None (resolved to the model dir), datamodule tokenizer=another dir: both have hparams with
    # the key "tokenizer"; Lightning would refuse to merge them for the logger if the datamodule logged its own.
    from lightning.pytorch.loggers import CSVLogger

    model = TokenClassifier(str(tiny_bert_dir))
    dm = make_dm(tiny_tokenizer_dir, files)
    assert dm.hparams["tokenizer"] == str(tiny_tokenizer_dir)  # still saved with checkpoints
    make_trainer(tmp_path, max_steps=1, logger=CSVLogger(tmp_path), limit_val_batches=0).fit(model, datamodule=dm)
    logged = (tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text()
    assert f"model: {tiny_bert_dir}" in logged
