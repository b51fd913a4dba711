"""MaskedLanguageModel: trains on a corpus, logs token-weighted metrics, exports a model SequenceClassifier loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from lit_llm.datamodules.corpus import TextCorpusDataModule
from lit_llm.modules import SequenceClassifier
from lit_llm.hf import has_next_sentence_head
from lit_llm.modules.masked_lm import MaskedLanguageModel

DOCS = [f"the movie {i} was really good and the story of john in paris was great . the end" for i in range(24)]


def corpus(tmp_path: Path) -> str:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return str(path)


def trainer(tmp_path: Path, **kwargs) -> Trainer:
    kwargs.setdefault("max_steps", 3)
    kwargs.setdefault("logger", False)
    return Trainer(accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=2,
                   num_sanity_val_steps=0, **kwargs)


def dm(tmp_path: Path, **kwargs) -> TextCorpusDataModule:
    kwargs.setdefault("block_size", 32)
    return TextCorpusDataModule(data_files=corpus(tmp_path), batch_size=4, val_fraction=0.2,
                                cache_dir=str(tmp_path / "hf"), **kwargs)


def test_pretrain_then_finetune_classifier(tmp_path, tiny_bert_dir, tiny_tokenizer_dir):
    mlm = MaskedLanguageModel(model=str(tiny_bert_dir), whole_word_masking=True, masking_seed=0,
                              optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    # a logger merges the module's and the datamodule's hparams: both take a tokenizer argument
    t = trainer(tmp_path, val_check_interval=3, logger=CSVLogger(tmp_path / "logs"))
    t.fit(mlm, dm(tmp_path, tokenizer=str(tiny_tokenizer_dir)))
    metrics = t.callback_metrics
    for name in ("train/loss", "train/perplexity", "train/accuracy", "val/loss", "val/perplexity", "val/accuracy"):
        assert name in metrics, name
    assert metrics["val/perplexity"] == pytest.approx(float(torch.exp(metrics["val/loss"])), rel=1e-5)
    assert mlm.export_path == tmp_path / "export"
    # the exported MLM checkpoint is a starting point for fine-tuning
    clf = SequenceClassifier(model=str(mlm.export_path), labels=["rotten", "fresh"])
    encoder = dict(clf.model.base_model.named_parameters())
    trained = dict(mlm.model.base_model.named_parameters())
    name = "encoder.layer.1.attention.self.query.weight"
    torch.testing.assert_close(encoder[name], trained[name])
    batch = clf.tokenizer(["a great film"], return_tensors="pt")
    assert clf.model(**batch).logits.shape == (1, 2)


def test_from_scratch_with_trained_tokenizer_and_nsp(tmp_path):
    config = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 37, "max_position_embeddings": 64}
    mlm = MaskedLanguageModel(model=config, nsp=True)
    data = dm(tmp_path, train_tokenizer="wordpiece", vocab_size=150, nsp=True)
    t = trainer(tmp_path, max_steps=2)
    t.fit(mlm, data)
    assert mlm.model.config.vocab_size == len(data.tokenizer)
    assert type(mlm.model).__name__ == "BertForPreTraining"
    assert "train/nsp_loss" in t.callback_metrics
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
    assert (mlm.export_path / "tokenizer.json").exists()


@pytest.mark.parametrize(("model_type", "native"), [
    ("bert", True), ("mobilebert", True), ("roformer", False), ("roberta", False), ("albert", False),
    ("electra", False),
])
def test_which_architectures_have_berts_next_sentence_head(model_type, native):
    # roformer has no pre-training class, roberta's is its masked LM, electra's a discriminator, albert's returns
    # sop_logits: each gets lit-llm's SentencePairHead
    assert has_next_sentence_head({"model_type": model_type}) is native


def test_sentence_order_on_an_architecture_without_a_pretraining_head(tmp_path):
    """RoFormer (the Chinese config's model) has no AutoModelForPreTraining class: lit-llm's own sentence-pair head
    learns sentence order beside the masked LM, is optimized with it, is saved in the checkpoint (a resumed fit and
    `lit-llm export` rebuild it) and is left out of the export, which loads as a plain masked LM."""
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    from lit_llm.commands.export import export_checkpoint

    config = {"model_type": "roformer", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 37, "max_position_embeddings": 64}
    kwargs = dict(model=config, nsp=True, nsp_negatives="swapped", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    starts = []

    class HeadAtStart(Callback):
        def on_train_start(self, trainer, pl_module):
            starts.append({k: v.clone() for k, v in pl_module.pair_head.state_dict().items()})

    def fit(max_steps: int, ckpt_path=None) -> tuple[Trainer, MaskedLanguageModel]:
        mlm = MaskedLanguageModel(**kwargs, export=ckpt_path is None)  # the first fit's export is never overwritten
        data = dm(tmp_path, train_tokenizer="wordpiece", vocab_size=150, nsp=True, nsp_negatives="swapped")
        t = Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=2,
                    num_sanity_val_steps=0, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True),
                                                       HeadAtStart()])
        t.fit(mlm, data, ckpt_path=ckpt_path)
        return t, mlm

    t, mlm = fit(4)
    assert type(mlm.model).__name__ == "RoFormerForMaskedLM"
    assert "train/sop_loss" in t.callback_metrics and "train/sop_accuracy" in t.callback_metrics
    end = {k: v.clone() for k, v in mlm.pair_head.state_dict().items()}
    assert any(not torch.equal(starts[0][k], end[k]) for k in end)  # trained with the model
    exported = AutoModelForMaskedLM.from_pretrained(mlm.export_path)  # a plain masked LM: nothing left unused
    assert type(exported).__name__ == "RoFormerForMaskedLM"
    assert set(load_file(mlm.export_path / "model.safetensors")) <= set(exported.state_dict())

    # resumed from last.ckpt: the head starts where the first fit left it
    fit(6, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    for k in end:
        torch.testing.assert_close(starts[1][k], end[k], rtol=0, atol=0)
    # `lit-llm export` rebuilds the module (head included, loaded strictly) and writes the masked LM alone
    out = export_checkpoint(tmp_path / "ckpt" / "last.ckpt", tmp_path / "from_ckpt",
                            "lit_llm.modules.MaskedLanguageModel")
    assert type(AutoModelForMaskedLM.from_pretrained(out)).__name__ == "RoFormerForMaskedLM"


def test_lora_keeps_the_pair_head_beside_the_model_in_its_checkpoints(tmp_path):
    """LoRA saves the model's trainable weights only, and whatever the module keeps beside the model: the pair head
    is in its checkpoints, so the fit-end restore of the best checkpoint and a resume load them strictly."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_llm.callbacks import LoRA

    config = {"model_type": "roformer", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 37, "max_position_embeddings": 64}

    def fit(max_steps: int, ckpt_path=None) -> MaskedLanguageModel:
        torch.manual_seed(0)  # the same random base: a LoRA checkpoint holds only the adapters
        mlm = MaskedLanguageModel(model=config, nsp=True, nsp_negatives="swapped", export=False)
        data = dm(tmp_path, train_tokenizer="wordpiece", vocab_size=150, nsp=True, nsp_negatives="swapped")
        best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", save_last=True)
        Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=2, val_check_interval=2,
                num_sanity_val_steps=0, callbacks=[LoRA(rank=2, export_artifact=False), best]
                ).fit(mlm, data, ckpt_path=ckpt_path)
        return mlm

    mlm = fit(2)  # the module restores its best checkpoint at fit end
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert {k for k in saved if k.startswith("pair_head.")} == {f"pair_head.{k}" for k in mlm.pair_head.state_dict()}
    assert any("lora_" in k for k in saved) and not any(k.endswith("query.base_layer.weight") for k in saved)
    fit(4, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))


def test_fsdp2_is_refused_for_lit_llms_pair_head_with_the_way_out(tiny_tokenizer_dir):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import ModelParallelStrategy

    from lit_llm.errors import InvalidArgumentError

    mlm = MaskedLanguageModel(model={"model_type": "roformer", "hidden_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "intermediate_size": 37},
                              tokenizer=str(tiny_tokenizer_dir), nsp=True, nsp_negatives="swapped")
    assert mlm.pair_head is not None
    # not constructed: only its type is read before anything is sharded
    mlm._trainer = SimpleNamespace(strategy=object.__new__(ModelParallelStrategy), datamodule=None)
    with pytest.raises(InvalidArgumentError, match=r"SentencePairHead .* ModelParallelStrategy does not shard.*"
                                                   r"--trainer.strategy ddp"):
        mlm.setup("fit")


def test_labels_in_batch_used_as_is(tiny_bert_dir):
    mlm = MaskedLanguageModel(model=str(tiny_bert_dir), export=False)
    ids = torch.tensor([[2, 30, 31, 3]])
    labels = torch.tensor([[-100, 30, -100, -100]])
    masked, out_labels = mlm.mask({"input_ids": ids, "labels": labels})
    assert torch.equal(masked, ids) and torch.equal(out_labels, labels)
    loss_sum, count, _, _ = mlm._loss({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)},
                                      "train")
    assert count.item() == 1
    assert loss_sum.item() == pytest.approx(mlm.model(input_ids=ids, labels=labels).loss.item(), rel=1e-5)


def test_tokenizer_without_mask_token(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from lit_llm.text.tokenizer_training import train_tokenizer

    bpe = train_tokenizer(DOCS, "bpe", vocab_size=300)
    no_mask = PreTrainedTokenizerFast(tokenizer_object=bpe.backend_tokenizer, eos_token="<|endoftext|>")
    no_mask.save_pretrained(tmp_path / "gpt_tok")
    with pytest.raises(ValueError, match=r"has no mask token.*use lit_llm.modules.CausalLanguageModel"):
        MaskedLanguageModel(model={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                   "num_attention_heads": 2}, tokenizer=str(tmp_path / "gpt_tok"))


def test_block_size_over_model_positions(tmp_path, tiny_tokenizer_dir):
    config = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "max_position_embeddings": 32}
    mlm = MaskedLanguageModel(model=config, tokenizer=str(tiny_tokenizer_dir))
    with pytest.raises(ValueError, match=r"block_size=64 is larger than the model's maximum positions \(32"):
        trainer(tmp_path).fit(mlm, dm(tmp_path, tokenizer=str(tiny_tokenizer_dir), block_size=64))


def test_argument_errors(tiny_bert_dir):
    with pytest.raises(ValueError, match=r"mlm_probability=0.0 must be in \(0, 1\)"):
        MaskedLanguageModel(model=str(tiny_bert_dir), mlm_probability=0.0)
    with pytest.raises(ValueError, match=r"mask_replace_prob=0.9 \+ random_replace_prob=0.5"):
        MaskedLanguageModel(model=str(tiny_bert_dir), mask_replace_prob=0.9, random_replace_prob=0.5)
    with pytest.raises(ValueError, match=r"layer_decay=1.5"):
        MaskedLanguageModel(model=str(tiny_bert_dir), layer_decay=1.5)


def test_export_dir_must_be_empty(tmp_path, tiny_bert_dir, tiny_tokenizer_dir):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "old.bin").write_text("x")
    with pytest.raises(FileExistsError, match=r"export.*already holds files"):
        trainer(tmp_path).fit(MaskedLanguageModel(model=str(tiny_bert_dir)),
                              dm(tmp_path, tokenizer=str(tiny_tokenizer_dir)))


def test_masking_generator_resumes(tmp_path, tiny_bert_dir):
    batch = {"input_ids": torch.randint(10, 100, (2, 16)), "special_tokens_mask": torch.zeros(2, 16, dtype=torch.long)}
    a = MaskedLanguageModel(model=str(tiny_bert_dir), masking_seed=7, export=False)
    a.mask(batch)
    checkpoint: dict = {}
    a.on_save_checkpoint(checkpoint)
    expected = a.mask(batch)
    b = MaskedLanguageModel(model=str(tiny_bert_dir), masking_seed=7, export=False)
    b.on_load_checkpoint(checkpoint)
    resumed = b.mask(batch)
    assert torch.equal(resumed[0], expected[0]) and torch.equal(resumed[1], expected[1])


def test_sparse_prediction_same_loss_and_gradients(tiny_bert_dir):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 100, (3, 20), generator=gen)
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    results = []
    for sparse in (True, False):
        torch.manual_seed(0)
        mlm = MaskedLanguageModel(model=str(tiny_bert_dir), export=False, sparse_prediction=sparse)
        assert (mlm._head_module() is mlm.model.cls) == sparse
        loss_sum, count, correct, _ = mlm._loss(batch, "train")
        loss_sum.backward()
        results.append((loss_sum.item(), count.item(), correct.item(),
                        {n: p.grad.clone() for n, p in mlm.named_parameters() if p.grad is not None}))
    (s_loss, s_count, s_correct, s_grads), (d_loss, d_count, d_correct, d_grads) = results
    assert s_count == d_count == 15 and s_correct == d_correct
    assert s_loss == pytest.approx(d_loss, rel=1e-6)
    for name in d_grads:
        torch.testing.assert_close(s_grads[name], d_grads[name], rtol=1e-5, atol=1e-7)
