"""The Pruning callback: schedule under Adam, measured sparsity, resume, structured shrink, DDP."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from compression_helpers import UserClassifier, loader, trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_llm.callbacks import Pruning
from lit_llm.pruning import measure_sparsity


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
        cb = Pruning(amount=0.6, start_step=1, end_step=6, frequency=2)
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


def test_structured_heads_pruned_then_shrunk_before_test(tmp_path):
    cb = Pruning(amount=0.5, mode="heads_and_neurons", scope="per_layer")
    model = UserClassifier()
    t = trainer(tmp_path, [cb], max_steps=3)
    t.fit(model, loader())
    assert model.model.bert.encoder.layer[0].attention.self.query.out_features == 32  # zeroed, not yet shrunk
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
def test_ddp_spawn_two_processes(tmp_path):
    model = UserClassifier()
    t = trainer(tmp_path, [_RanksAgree(), Pruning(amount=0.5, start_step=0, end_step=2, frequency=1)],
                max_steps=3, strategy="ddp_spawn", devices=2)
    t.fit(model, loader())
    # ddp_spawn copies rank 0's weights back: half of the block Linear weights are exactly zero
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
    zeros, total = measure_sparsity(model, names)
    assert zeros == round(0.5 * total)


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
