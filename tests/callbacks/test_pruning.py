"""The Pruning callback: schedule under Adam, measured sparsity, resume, structured shrink, DDP, the artifact."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from artifact_helpers import example_inputs, in_memory_logits, load_in_fresh_process, onnx_logits_in_fresh_process
from compression_helpers import UserClassifier, loader, tiny_config, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from lit_llm.callbacks import Int8Quantization, Pruning
from lit_llm.compression.compressed_models import load_pruned
from lit_llm.compression.pruning import measure_sparsity


def _zeros(module, masks):
    return measure_sparsity(module, [k for k in masks if k.endswith("weight")])


def test_gradual_pruning_under_adam_keeps_pruned_weights_zero(tmp_path):
    cb = Pruning(amount=0.5, start_step=0, end_step=4, frequency=1)
    model = UserClassifier()
    t = trainer(tmp_path, [cb], max_steps=6)
    t.fit(model, loader())
    masks = cb.final_masks
    zeros, total = _zeros(model, masks)
    assert zeros == round(0.5 * total)  # measured, exact: the step after each update re-zeroed Adam's moves
    params = dict(model.named_parameters())
    for key, mask in masks.items():
        assert torch.all(params[key][~mask] == 0)
    assert t.callback_metrics["pruning/sparsity"].item() == pytest.approx(zeros / total)
    assert cb.current_amount == 0.5
    report = (tmp_path / "compression_report.json").read_text()
    assert '"measured_sparsity": 0.5' in report and '"nonzero_parameters"' in report


def test_sparsity_follows_the_cubic_schedule(tmp_path):
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(trainer.callback_metrics["pruning/target"].item())

    t = trainer(tmp_path, [Pruning(amount=0.8, start_step=0, end_step=4, frequency=1), Spy()], max_steps=5)
    t.fit(UserClassifier(), loader(n=40))
    expected = [0.8 * (1 - (1 - s / 4) ** 3) for s in (1, 2, 3, 4, 4)]
    assert seen == pytest.approx(expected)


def test_masks_survive_checkpoint_and_resume(tmp_path):
    def run(max_steps, ckpt=None, root=tmp_path / "a"):
        cb = Pruning(amount=0.6, start_step=1, end_step=6, frequency=2, export_artifact=False)  # fits twice in one root
        ck = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=3)
        t = trainer(root, [cb, ck], max_steps=max_steps, enable_checkpointing=True)
        model = UserClassifier()
        t.fit(model, loader(n=24), ckpt_path=ckpt)  # 3 batches: the checkpoint is at an epoch end
        return cb, model

    cb_full, full = run(8, root=tmp_path / "full")
    run(3, root=tmp_path / "part")
    saved = torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("Pruning"))
    assert state["masks"] and state["last_update_step"] == 3
    cb_res, resumed = run(8, ckpt=tmp_path / "part" / "last.ckpt", root=tmp_path / "part")
    for key, mask in cb_full.final_masks.items():
        assert torch.equal(mask, cb_res.final_masks[key])
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_structured_heads_pruned_then_shrunk_at_fit_end(tmp_path):
    cb = Pruning(amount=0.5, mode="heads_and_neurons", scope="per_layer")
    model = UserClassifier()
    t = trainer(tmp_path, [cb], max_steps=3)
    t.fit(model, loader())
    attn = model.model.bert.encoder.layer[0].attention.self
    assert attn.query.out_features == 16  # shrunk at fit end, so callbacks after this one see the smaller model
    t.test(model, loader(n=16))
    attn = model.model.bert.encoder.layer[0].attention.self
    assert attn.query.out_features == 16 and attn.num_attention_heads == 2
    assert model.model.bert.encoder.layer[1].intermediate.dense.out_features == 20
    assert "pruning_shrunk" in (tmp_path / "compression_report.json").read_text()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"amount": 1.0}, r"Pruning\(amount=1.0\): must be in \[0, 1\)"),
        ({"amount": -0.2}, r"Pruning\(amount=-0.2\)"),
        ({"start_step": 5, "end_step": 2}, r"end_step=2.*>= start_step=5"),
        ({"mode": "rows"}, r"mode='rows'"),
        ({"scope": "local"}, r"scope='local'"),
        ({"frequency": 0}, r"frequency=0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Pruning(**kwargs)


def test_pattern_that_matches_nothing_fails_before_training(tmp_path):
    t = trainer(tmp_path, [Pruning(amount=0.5, patterns=[r"decoder\.dense"])])
    with pytest.raises(ValueError, match=r"match no Linear layer of UserClassifier"):
        t.fit(UserClassifier(), loader())
    assert t.global_step == 0


class _RanksAgree(pl.Callback):
    def on_fit_end(self, trainer, pl_module):
        pruning = next(c for c in trainer.callbacks if isinstance(c, Pruning))
        checksum = torch.tensor(float(sum(int(m.sum()) for m in pruning.masks.values())))
        gathered = trainer.strategy.all_gather(checksum)
        if not torch.all(gathered == gathered[0]):
            raise AssertionError(f"ranks disagree on the masks: {gathered}")


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    model = UserClassifier()
    t = trainer(tmp_path, [_RanksAgree(), Pruning(amount=0.5, start_step=0, end_step=2, frequency=1)],
                max_steps=3, strategy="ddp_fork", devices=2)
    t.fit(model, loader())
    # the launcher copies rank 0's weights back: half of the block Linear weights are exactly zero
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
    zeros, total = measure_sparsity(model, names)
    assert zeros == round(0.5 * total)
    # rank 0 wrote the artifact (in its worker process), with the same zeros
    reloaded = load_pruned(tmp_path / "export-pruned")
    assert measure_sparsity(reloaded, [n.removeprefix("model.") for n in names]) == (zeros, total)


def test_works_when_the_module_builds_its_model_in_setup(tmp_path):
    from compression_helpers import LazyClassifier

    cb = Pruning(amount=0.5)
    model = LazyClassifier()
    trainer(tmp_path, [cb], max_steps=2).fit(model, loader())
    zeros, total = _zeros(model, cb.final_masks)
    assert zeros == round(0.5 * total)


@pytest.mark.slow
def test_fsdp2_sharded_parameters_two_processes(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "pruning_fsdp2_script.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["is_dtensor"] and r["local_rows"] == 16  # the 32-row output projection, one half per rank
        assert r["zeros"] == round(0.5 * r["total"])  # exact over the whole (gathered) weights
        assert r["logged"] == pytest.approx(r["zeros"] / r["total"])  # logged sparsity summed over shards
    # the artifact was gathered from the shards: the reloaded model has exactly the pruned zeros
    reloaded = load_pruned(tmp_path / "export-pruned")
    names = [f"{n}.weight" for n, m in reloaded.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
    assert measure_sparsity(reloaded, names) == (ranks[0]["zeros"], ranks[0]["total"])


# ------------------------------------------------------------------------------------------------ the artifact
def test_structured_artifact_is_smaller_and_loads_in_a_fresh_process(tmp_path):
    cb = Pruning(amount=0.5, mode="heads_and_neurons", start_step=0, end_step=2, frequency=1)
    model = UserClassifier()
    trainer(tmp_path, [cb], max_steps=3).fit(model, loader())
    artifact = tmp_path / "export-pruned"  # the default: <default_root_dir>/export-pruned
    assert cb.artifact_path == artifact
    inputs = example_inputs()
    expected = in_memory_logits(model.model, inputs)

    loaded = load_in_fresh_process("load_pruned", artifact, inputs, tmp_path)
    np.testing.assert_allclose(loaded["logits"], expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_logits_in_fresh_process(artifact, inputs, tmp_path), expected, atol=1e-4, rtol=0)

    manifest = json.loads((artifact / "lit_llm_pruning.json").read_text())
    for block, widths in manifest["layers"].items():  # every block has the shapes its manifest entry records
        assert loaded["shapes"][f"{block}.attention.self.query.weight"] == [widths["num_attention_heads"] * 8, 32]
        assert loaded["shapes"][f"{block}.attention.output.dense.weight"] == [32, widths["num_attention_heads"] * 8]
        assert loaded["shapes"][f"{block}.intermediate.dense.weight"] == [widths["intermediate_size"], 32]
    for i, widths in enumerate(manifest["layers"].values()):  # the module itself is shrunk alike at fit end
        assert model.model.bert.encoder.layer[i].attention.self.query.out_features == widths["num_attention_heads"] * 8
    assert sum(w["num_attention_heads"] for w in manifest["layers"].values()) == 4  # 2 blocks x 4 heads, 50% gone
    assert sum(w["intermediate_size"] for w in manifest["layers"].values()) == 40  # 2 x 40 neurons, 50% gone
    dense = BertForSequenceClassification(tiny_config())
    assert loaded["parameters"] == manifest["parameters"] < sum(p.numel() for p in dense.parameters())
    dense.save_pretrained(tmp_path / "dense")
    dense_bytes = (tmp_path / "dense" / "model.safetensors").stat().st_size
    assert (artifact / "lit_llm_model.safetensors").stat().st_size < 0.8 * dense_bytes
    report = json.loads((tmp_path / "compression_report.json").read_text())["sections"]["pruning_artifact"]
    assert report["parameters"] == manifest["parameters"] and report["onnx_bytes"] > 0


def test_artifact_holds_the_weights_our_module_restores_at_fit_end(tmp_path, tiny_tokenizer_dir, tiny_tokenizer,
                                                                   sentiment_csvs):
    from lit_llm.datamodules import TextClassificationDataModule
    from lit_llm.modules import SequenceClassifier

    class LastWeights(pl.Callback):  # the weights at the last step, before the module restores the best checkpoint
        def on_train_end(self, trainer, pl_module):
            self.state = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

    config = dict(model_type="bert", vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=40, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    model = SequenceClassifier(config, tokenizer=str(tiny_tokenizer_dir))
    data = TextClassificationDataModule(str(tiny_tokenizer_dir), train_file=str(sentiment_csvs["train"]),
                                        test_file=str(sentiment_csvs["test"]), batch_size=16)
    pruning = Pruning(amount=0.5, mode="heads", start_step=0, end_step=1, frequency=1)
    # the one checkpoint is at step 2 (so it is the "best"), training goes on to step 3
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=1)
    last = LastWeights()
    t = trainer(tmp_path, [pruning, last, best], max_steps=3, enable_checkpointing=True)
    t.fit(model, datamodule=data)
    assert best.best_model_path.endswith("step=2.ckpt")

    inputs = tiny_tokenizer(["a good film", "the plot was dull and boring"], padding=True, return_tensors="pt")
    inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    restored = in_memory_logits(model.model, inputs)
    artifact = load_pruned(tmp_path / "export-pruned")
    assert (artifact.config.architectures, artifact.config.id2label) == (["BertForSequenceClassification"],
                                                                        model.model.config.id2label)
    np.testing.assert_allclose(in_memory_logits(artifact, inputs), restored, atol=1e-4, rtol=0)
    final = BertForSequenceClassification(model.model.config)
    final.load_state_dict(last.state)
    assert np.abs(in_memory_logits(final, inputs) - restored).max() > 1e-3  # restoring changed the model
    assert (tmp_path / "export-pruned" / "tokenizer_config.json").is_file()  # the module's tokenizer came along

    # the module's own HF export (written before the shrink) keeps the zeroed heads at full size: the same function
    exported = AutoModelForSequenceClassification.from_pretrained(model.export_path)
    keys = [k for k in pruning.final_masks if k.endswith("weight")]  # names in the LightningModule: model.bert...
    assert measure_sparsity(exported, [k.removeprefix("model.") for k in keys])[0] > 0
    np.testing.assert_allclose(in_memory_logits(exported, inputs), restored, atol=1e-4, rtol=0)
    t.test(model, datamodule=data)  # the module was shrunk at fit end: it equals the artifact in shape
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in artifact.state_dict().items()}
    np.testing.assert_allclose(in_memory_logits(model.model, inputs), restored, atol=1e-4, rtol=0)


def test_unstructured_artifact_keeps_the_mask(tmp_path):
    cb = Pruning(amount=0.6, start_step=0, end_step=2, frequency=1, onnx=False)
    model = UserClassifier()
    trainer(tmp_path, [cb], max_steps=3).fit(model, loader())
    keys = [k.removeprefix("model.") for k in cb.final_masks if k.endswith("weight")]
    in_memory = measure_sparsity(model.model, keys)
    assert in_memory[0] == round(0.6 * in_memory[1])
    # a plain HF directory (the zeros are the compression): from_pretrained and our loader give the same zeros
    for reloaded in (AutoModelForSequenceClassification.from_pretrained(tmp_path / "export-pruned"),
                     load_pruned(tmp_path / "export-pruned")):
        assert measure_sparsity(reloaded, keys) == in_memory
        params = dict(reloaded.named_parameters())
        for key, mask in cb.final_masks.items():
            assert torch.all(params[key.removeprefix("model.")][~mask] == 0)
    assert not (tmp_path / "export-pruned" / "model.onnx").exists()  # onnx=False


def test_artifact_directory_that_holds_files_is_refused_before_training(tmp_path):
    (tmp_path / "export-pruned").mkdir()
    (tmp_path / "export-pruned" / "config.json").write_text("{}")
    t = trainer(tmp_path, [Pruning(amount=0.5)])
    with pytest.raises(FileExistsError, match=r"Pruning: artifact directory .*export-pruned' already holds files"):
        t.fit(UserClassifier(), loader())
    assert t.global_step == 0 and (tmp_path / "export-pruned" / "config.json").read_text() == "{}"
    other = tmp_path / "elsewhere"
    trainer(tmp_path, [Pruning(amount=0.5, artifact_dir=str(other), onnx=False)], max_steps=1).fit(
        UserClassifier(), loader())
    assert (other / "lit_llm_pruning.json").is_file()  # artifact_dir= is the way out


def test_module_without_the_hf_model_attribute_is_refused_before_training(tmp_path):
    t = trainer(tmp_path, [Pruning(amount=0.5, model_attr="net")])
    with pytest.raises(AttributeError, match=r"Pruning: .*UserClassifier\.net, which holds nothing.*model_attr="):
        t.fit(UserClassifier(), loader())
    assert t.global_step == 0
    trainer(tmp_path, [Pruning(amount=0.5, export_artifact=False)], max_steps=1).fit(UserClassifier(), loader())
    assert not (tmp_path / "export-pruned").exists()  # export_artifact=False turns it off


def test_artifact_with_int8_at_fit_end_or_low_rank_in_the_same_run(tmp_path):
    from lit_llm.callbacks import Int8Quantization, LowRankFactorization
    from lit_llm.compression.compressed_models import load_low_rank

    int8_first = [Int8Quantization(apply_on="fit_end", export_artifact=False, report=False), Pruning(amount=0.5)]
    t = trainer(tmp_path / "a", int8_first)
    with pytest.raises(ValueError, match=r"apply_on='fit_end'\) comes before it.*list Pruning before"):
        t.fit(UserClassifier(), loader())
    assert t.global_step == 0
    t = trainer(tmp_path / "b", [LowRankFactorization(rank=4, report=False), Pruning(amount=0.5)])
    with pytest.raises(ValueError, match=r"the model has LowRankLinear layers .* Set export_artifact=False here"):
        t.fit(UserClassifier(), loader())
    assert t.global_step == 0
    # the way that works: the factorized model's artifact keeps the pruned zeros of its factors
    pruning = Pruning(amount=0.5, export_artifact=False)
    model = UserClassifier()
    trainer(tmp_path / "c", [LowRankFactorization(rank=4, report=False, onnx=False), pruning], max_steps=2).fit(
        model, loader())
    keys = [k for k in pruning.final_masks if k.endswith("weight")]
    assert any(".a.weight" in k for k in keys)
    reloaded = load_low_rank(tmp_path / "c" / "export-low-rank")
    assert measure_sparsity(reloaded, [k.removeprefix("model.") for k in keys]) == measure_sparsity(model, keys)


def test_int8_after_structured_pruning_quantizes_the_shrunk_model(tmp_path):
    """The combined recipe ends in one artifact: the int8 model has the pruned widths."""
    onnx = pytest.importorskip("onnx")
    callbacks = [Pruning(amount=0.5, mode="heads_and_neurons", scope="per_layer", export_artifact=False),
                 Int8Quantization(apply_on="fit_end", report=False)]
    trainer(tmp_path, callbacks, max_steps=3).fit(UserClassifier(), loader())
    graph = onnx.load(str(tmp_path / "export-int8" / "model.int8.onnx")).graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    query = [dims for name, dims in shapes.items() if name.endswith("layer.0.attention.self.query.bias")]
    assert query == [[16]]  # 2 of 4 heads of 8 dims: the int8 artifact is the shrunk model
