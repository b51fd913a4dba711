"""The LoRA callback: on a user's module and on our TokenClassifier / MaskedLanguageModel from a YAML line, QLoRA on
CPU, checkpoints with only the adapters, the errors a user can meet, and FSDP2 on 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from transformers import AutoModelForMaskedLM, AutoModelForTokenClassification

from compression_helpers import UserClassifier, loader, trainer
from lit_llm.callbacks import LoRA
from lit_llm.errors import InvalidArgumentError
from lit_llm.strategies import TransformerFSDP2

REPO = Path(__file__).resolve().parents[2]


def from_yaml(text: str) -> Callback:
    """The callback as LightningCLI builds it from a ``trainer.callbacks`` entry."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callback", type=Callback)
    return parser.instantiate(parser.parse_object({"callback": yaml.safe_load(text)})).callback


def test_bad_arguments_are_refused_with_the_value():
    with pytest.raises(InvalidArgumentError, match=r"LoRA: rank=0 must be an int >= 1"):
        LoRA(rank=0)
    with pytest.raises(InvalidArgumentError, match=r"dropout=1\.5 must be in \[0, 1\)"):
        LoRA(dropout=1.5)


def test_users_module_checkpoint_holds_only_the_adapters(tmp_path):
    lora = LoRA(rank=2, alpha=4)
    model = UserClassifier()
    base_query = model.model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [lora, checkpoints], max_steps=3, enable_checkpointing=True).fit(model, loader())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    keys = set(saved["state_dict"])
    assert keys == lora._trainable and len(keys) == 2 * 12 + 2  # A and B of 12 layers, the head's weight and bias
    assert saved["optimizer_states"][0]["state"]
    assert saved["callbacks"][lora.state_key]["spec"]["targets"][0] == "bert.encoder.layer.0.attention.self.query"
    # At fit end the module holds a plain merged model: the frozen base plus the trained update.
    query = model.model.bert.encoder.layer[0].attention.self.query
    assert type(query) is torch.nn.Linear and not torch.equal(query.weight, base_query)
    assert (tmp_path / "export-lora" / "adapter_config.json").is_file() and lora.artifact_path == tmp_path / \
        "export-lora"
    assert lora.trainable_parameters < lora.total_parameters


def test_token_classifier_and_masked_lm_from_a_yaml_line(tmp_path, tiny_bert_dir, tiny_tokenizer_dir):
    """Our modules with one line of YAML: their own fit-end export is the merged model, from_pretrained loads it."""
    from lit_llm.datamodules import TextCorpusDataModule, TokenClassificationDataModule
    from lit_llm.modules import MaskedLanguageModel, TokenClassifier

    conll = tmp_path / "train.conll"
    conll.write_text("john\tB-PER\nlives\tO\nin\tO\nparis\tB-LOC\n\nmary\tB-PER\nloved\tO\nlondon\tB-LOC\n\n" * 4)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"the movie {i} was good and the story was great ."}) + "\n"
                              for i in range(16)))
    cases = [
        (TokenClassifier(str(tiny_bert_dir)), TokenClassificationDataModule(
            str(tiny_tokenizer_dir), train_file=str(conll), batch_size=4), AutoModelForTokenClassification,
         ["classifier"]),
        (MaskedLanguageModel(str(tiny_bert_dir)), TextCorpusDataModule(
            data_files=str(corpus), tokenizer=str(tiny_tokenizer_dir), batch_size=4, block_size=16,
            val_fraction=0.0, cache_dir=str(tmp_path / "hf")), AutoModelForMaskedLM, []),
    ]
    for i, (module, data, auto, head) in enumerate(cases):
        lora = from_yaml("{class_path: lit_llm.callbacks.LoRA, init_args: {rank: 2, alpha: 8}}")
        run = tmp_path / f"run{i}"
        torch.manual_seed(0)
        trainer(run, [lora], max_steps=2, limit_val_batches=0).fit(module, datamodule=data)
        assert lora.spec is not None and lora.spec.head == head and len(lora.spec.targets) == 12
        exported = auto.from_pretrained(run / "export").eval()  # strict: transformers 5 refuses missing weights
        ids = torch.tensor([[2, 10, 11, 12, 3]])
        with torch.no_grad():
            torch.testing.assert_close(exported(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits,
                                       rtol=0, atol=1e-5)


def test_qlora_trains_a_users_module_on_cpu(tmp_path):
    import bitsandbytes as bnb

    seen: list[type] = []

    class Peek(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen.append(type(pl_module.model.bert.encoder.layer[0].attention.self.query.base_layer))

    lora = LoRA(rank=4, alpha=8, quantize_base="nf4", export_merged=True)
    model = UserClassifier()
    trainer(tmp_path, [lora, Peek()], max_steps=2).fit(model, loader())
    assert seen and all(cls is bnb.nn.Linear4bit for cls in seen)
    assert type(model.model.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear  # merged, dequantized
    assert (tmp_path / "export-lora-merged" / "config.json").is_file() and lora.merged_path is not None


def test_qlora_compute_dtype_auto_follows_the_machine_and_resumes_elsewhere(tmp_path, monkeypatch):
    import lit_llm.callbacks.lora as lora_module

    monkeypatch.setattr(lora_module, "qlora_compute_dtype", lambda device: "float32")  # a CPU without bf16 hardware
    first = LoRA(rank=4, alpha=8, quantize_base="nf4", export_artifact=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [first, ckpt], max_steps=2, enable_checkpointing=True).fit(UserClassifier(), loader())
    assert first.spec is not None and first.spec.compute_dtype == "float32"
    # Resumed where bf16 is the machine's choice: the adapters load (cast); only the dtype differs.
    second = LoRA(rank=4, alpha=8, quantize_base="nf4", compute_dtype="bf16", export_artifact=False)
    trainer(tmp_path / "b", [second], max_steps=3).fit(UserClassifier(), loader(),
                                                      ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert second.spec is not None and second.spec.compute_dtype == "bfloat16"
    with pytest.raises(InvalidArgumentError, match=r"LoRA\(compute_dtype='fp16'\): must be 'auto', 'bf16' or 'fp32'"):
        LoRA(compute_dtype="fp16")  # type: ignore[arg-type]


def test_qlora_under_fsdp2_is_refused_before_training():
    fake = types.SimpleNamespace(strategy=TransformerFSDP2())
    with pytest.raises(InvalidArgumentError, match=r"LoRA\(quantize_base='nf4'\) cannot run under FSDP2.*use the ddp "
                                                   r"strategy for QLoRA"):
        LoRA(quantize_base="nf4").setup(fake, UserClassifier(), "fit")  # type: ignore[arg-type]


def test_a_drop_in_that_cannot_work_fails_at_fit_start(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"LoRA patterns=\['q_proj'\] match no Linear layer of "
                                                   r"BertForSequenceClassification\. Its Linear layers are: "
                                                   r"bert\.encoder\.layer\.0\.attention\.self\.query"):
        trainer(tmp_path, [LoRA(patterns=["q_proj"])]).fit(UserClassifier(), loader())
    with pytest.raises(AttributeError, match=r"LoRA adapts the model at UserClassifier\.network, which holds "
                                             r"nothing; .*pass model_attr='<attribute>'"):
        trainer(tmp_path, [LoRA(model_attr="network")]).fit(UserClassifier(), loader())

    class FixedParams(UserClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.params = list(self.parameters())  # collected before the adapters exist

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.params, lr=1e-2)

    with pytest.raises(AttributeError, match=r"LoRA: the optimizer of FixedParams holds none of the adapters, so "
                                             r"they would never train"):
        trainer(tmp_path, [LoRA(export_artifact=False)]).fit(FixedParams(), loader())


def test_a_resume_onto_another_base_or_other_adapters_is_refused():
    lora = LoRA(rank=2)
    lora._adapt(UserClassifier())
    state = lora.state_dict()
    other = LoRA(rank=2)
    other._adapt(UserClassifier(hidden_dropout_prob=0.1))  # same shapes and weights: accepted
    other.load_state_dict(state)
    torch.manual_seed(5)
    changed = UserClassifier()
    with torch.no_grad():
        changed.model.bert.embeddings.word_embeddings.weight.add_(1.0)
    other = LoRA(rank=2)
    other._adapt(changed)
    with pytest.raises(InvalidArgumentError, match=r"LoRA: the base model of this run differs from the one the "
                                                   r"checkpoint's adapters were trained on"):
        other.load_state_dict(state)
    fewer = LoRA(rank=2, patterns=["attention"])
    fewer._adapt(UserClassifier())
    with pytest.raises(InvalidArgumentError, match=r"LoRA: the checkpoint's adapters \(rank 2, alpha 16\.0, 12 "
                                                   r"targets.*differ from this run's \(rank 2, alpha 16\.0, 8 targets"):
        fewer.load_state_dict(state)


@pytest.mark.slow
def test_fsdp2_on_two_processes_trains_resumes_exactly_and_writes_the_merged_model(
        tmp_path, tiny_tokenizer_dir, tiny_tokenizer, sentiment_csvs):
    from transformers import AutoModelForSequenceClassification

    launcher_keys = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GLOBAL_RANK")
    env = {k: v for k, v in os.environ.items() if k not in launcher_keys}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    script = Path(__file__).parent / "lora_fsdp2_script.py"
    args = [tmp_path, tiny_tokenizer_dir, sentiment_csvs["train"], len(tiny_tokenizer)]
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert result["a"].keys() == result["b"].keys()
    for key in result["a"]:  # the merged models of the straight and the resumed run
        torch.testing.assert_close(result["a"][key], result["b"][key], rtol=0, atol=1e-6, msg=key)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a" / "export-lora-merged")
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(value, result["a"][key], rtol=0, atol=0, msg=key)
    assert (tmp_path / "a" / "export-lora" / "adapter_model.safetensors").is_file()
