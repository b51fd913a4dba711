"""EMA: the average it keeps, where the average goes (validation, the module at the end), and its errors.

Checkpoints, resume and 2 processes: tests/callbacks/test_conformance.py; the main job's config (with EMA) under
`lit-llm fit` with DDP and with TransformerFSDP2 (EMA off): tests/test_readme.py, its scale section; our modules
built from the data and the `lit-llm fit` -> export -> resume journey: tests/modules/test_weight_averaging.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch import Callback

from compression_helpers import LazyClassifier, UserClassifier, loader, trainer
from lit_llm.callbacks import EMA
from lit_llm.errors import InvalidArgumentError


class RecordWeights(Callback):
    """The raw weights after every optimizer step (listed before EMA, so it reads them before any swap)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.steps.append({name: p.detach().clone() for name, p in pl_module.named_parameters()})


class KeepAverage(Callback):
    """The EMA's AveragedModel at train end (EMA frees it at teardown); listed after EMA."""

    def __init__(self, ema: EMA) -> None:
        self.ema = ema
        self.average: Any = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.average = self.ema._average_model


@pytest.mark.parametrize(("decay", "every"), [(0.5, 1), (0.9, 2)])
def test_the_module_ends_with_the_exponential_average_of_its_weights(tmp_path, decay, every):
    record, ema = RecordWeights(), EMA(decay=decay, update_every_n_steps=every)
    keep = KeepAverage(ema)
    module = UserClassifier()
    trainer(tmp_path, [record, ema, keep], max_steps=5).fit(module, loader())

    # Steps are 0-based for update_every_n_steps: the updates follow steps 0, every, 2 * every, ...
    updates = [weights for step, weights in enumerate(record.steps) if step % every == 0]
    expected = dict(updates[0])
    for weights in updates[1:]:
        expected = {name: decay * expected[name] + (1 - decay) * weights[name] for name in expected}
    assert int(keep.average.n_averaged) == len(updates)
    # The in-place foreach update, not Lightning's per-tensor avg_fn.
    assert keep.average.avg_fn is None and keep.average.multi_avg_fn is not None
    assert ema._average_model is None  # freed at teardown: the module holds the average
    for name, value in module.named_parameters():
        torch.testing.assert_close(value.detach(), expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(expected[name], record.steps[-1][name]) for name in expected)


def test_validation_runs_on_the_average_and_training_on_the_raw_weights(tmp_path):
    seen: dict[str, list[torch.Tensor]] = {"val": [], "train": []}

    class Probe(Callback):
        def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            seen["val"].append(pl_module.model.classifier.weight.detach().clone())

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            seen["train"].append(pl_module.model.classifier.weight.detach().clone())

    ema = EMA(decay=0.9)
    keep = KeepAverage(ema)
    module = UserClassifier()
    # Probe after EMA: EMA swaps the average in at validation start and the raw weights back at its end.
    trainer(tmp_path, [ema, Probe(), keep], max_steps=4, limit_val_batches=1, val_check_interval=2).fit(
        module, loader(), loader(8))
    average_at_val = keep.average.module.model.classifier.weight.detach()
    assert len(seen["val"]) == 2
    torch.testing.assert_close(seen["val"][-1], module.model.classifier.weight.detach())  # the end: the average
    assert not torch.equal(seen["val"][0], seen["train"][2])  # validation at step 2 did not see the raw weights
    assert not torch.equal(average_at_val, seen["train"][-1])


def test_a_module_without_weights_when_fit_starts_is_refused(tmp_path):
    class BuildsInSetupOnly(LazyClassifier):
        pass

    with pytest.raises(InvalidArgumentError, match=r"EMA: BuildsInSetupOnly has no parameters when fit starts.*"
                                                     r"configure_model"):
        trainer(tmp_path, [EMA()], max_steps=2).fit(BuildsInSetupOnly(), loader())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"decay": 1.0}, r"EMA\(decay=1\.0\): must be in \[0, 1\)"),
    ({"decay": -0.1}, r"EMA\(decay=-0\.1\): must be in \[0, 1\)"),
    ({"update_every_n_steps": 0}, r"EMA\(update_every_n_steps=0\): must be >= 1"),
])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        EMA(**kwargs)


def test_a_resume_with_another_decay_says_so_and_a_test_does_not(tmp_path):
    import warnings

    module = UserClassifier()
    fit = trainer(tmp_path, [EMA(decay=0.5)], max_steps=2)
    fit.fit(module, loader())
    fit.save_checkpoint(tmp_path / "m.ckpt")
    with pytest.warns(UserWarning, match=r"made with decay=0\.5, this run uses decay=0\.9"):
        trainer(tmp_path, [EMA(decay=0.9)], max_steps=3).fit(UserClassifier(), loader(),
                                                            ckpt_path=tmp_path / "m.ckpt", weights_only=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*decay=.*")
        trainer(tmp_path, [EMA(decay=0.9)], limit_test_batches=1).test(UserClassifier(), loader(8),
                                                                       ckpt_path=tmp_path / "m.ckpt",
                                                                       weights_only=True)


def test_test_from_a_checkpoint_runs_the_average_without_a_warning(tmp_path):
    """`lit-llm test --config <a config with EMA> --ckpt_path ...`: the checkpoint's state_dict is the average."""
    import warnings

    module = UserClassifier()
    fit = trainer(tmp_path, [EMA(decay=0.5)], max_steps=3)
    fit.fit(module, loader())
    fit.save_checkpoint(tmp_path / "m.ckpt")
    average = {name: p.detach().clone() for name, p in module.named_parameters()}  # the module ends on the average

    fresh = UserClassifier()
    with warnings.catch_warnings():
        # Lightning's WeightAveraging warns here on every test / predict
        warnings.filterwarnings("error", message=".*WeightAveraging.*")
        trainer(tmp_path, [EMA(decay=0.5)], limit_test_batches=1).test(fresh, loader(8), ckpt_path=tmp_path / "m.ckpt",
                                                                       weights_only=True)
    for name, value in fresh.named_parameters():
        assert torch.equal(value.detach(), average[name]), name


def test_integer_buffers_are_copied_not_averaged(tmp_path):
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    from lit_llm.callbacks.ema import ema_update

    # What torch's EMA does to equal integers: 3 * 0.9 + 3 * 0.1 is 2.9999998 in float32, stored as 2.
    ids = [torch.arange(8)]
    get_ema_multi_avg_fn(0.9)(ids, [torch.arange(8)], None)
    assert not torch.equal(ids[0], torch.arange(8))
    ids = [torch.arange(8)]
    ema_update(0.9)(ids, [torch.arange(8)], None)
    assert torch.equal(ids[0], torch.arange(8))

    module = UserClassifier()
    positions = module.model.bert.embeddings.position_ids.clone()
    trainer(tmp_path, [EMA(decay=0.9)], max_steps=3, limit_val_batches=1, val_check_interval=1).fit(
        module, loader(), loader(8))
    assert torch.equal(module.model.bert.embeddings.position_ids, positions)


def test_test_after_fit_on_the_best_checkpoint_runs_the_average(tmp_path):
    """trainer.test(ckpt_path="best") in the process that fitted (lit-llm fit --test_after_fit with export off,
    a user's own script): the module is tested on the checkpoint's average, not on its raw weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_llm.commands.export import load_checkpoint

    module = UserClassifier()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", save_top_k=1)
    fit = trainer(tmp_path, [EMA(decay=0.5), checkpoint], max_steps=4, limit_val_batches=1, val_check_interval=2,
                  enable_checkpointing=True, limit_test_batches=1)
    fit.fit(module, loader(), loader(8))
    fit.test(module, loader(8), ckpt_path="best", weights_only=True)
    saved = load_checkpoint(checkpoint.best_model_path)
    tested = module.state_dict()
    assert any(not torch.equal(saved["state_dict"][k], saved["current_model_state"][k]) for k in tested)
    for name, value in tested.items():
        assert torch.equal(value, saved["state_dict"][name]), name


def test_a_callback_that_changes_the_model_goes_before_ema(tmp_path):
    from lit_llm.callbacks import LowRankFactorization

    with pytest.raises(InvalidArgumentError, match=r"EMA: the model changed after EMA copied it .*list EMA after the "
                                                     r"callbacks that change the model"):
        trainer(tmp_path, [EMA(), LowRankFactorization(rank=2, report=False, export_artifact=False)],
                max_steps=2).fit(UserClassifier(), loader())
    module = UserClassifier()
    keep_order = [LowRankFactorization(rank=2, report=False, export_artifact=False), EMA(decay=0.5)]
    trainer(tmp_path, keep_order, max_steps=2).fit(module, loader())
    assert any("LowRank" in type(m).__name__ for m in module.modules())


def test_lora_listed_after_ema_is_refused_too(tmp_path):
    from lit_llm.callbacks import LoRA

    with pytest.raises(InvalidArgumentError, match=r"EMA: the model changed after EMA copied it"):
        trainer(tmp_path, [EMA(), LoRA(rank=2)], max_steps=2).fit(UserClassifier(), loader())


@pytest.mark.parametrize("strategy", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_ema_is_off_under_fsdp_and_deepspeed_too(strategy):
    from types import SimpleNamespace

    import lightning.pytorch.strategies as strategies

    # not constructed: DeepSpeed's __init__ needs the deepspeed package, FSDP's a CUDA device at setup
    instance = object.__new__(getattr(strategies, strategy))
    ema = EMA()
    with pytest.warns(UserWarning, match=rf"EMA is off for this run: .*sharded strategy \({strategy}\)"):
        assert ema._sharded(SimpleNamespace(strategy=instance))
    assert ema._off


def test_under_a_sharded_strategy_ema_is_off_and_says_so(tmp_path):
    """The main job's config (which has EMA) stays usable with FSDP / FSDP2: EMA steps aside, with a warning."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    ema = EMA()
    assert not ema._sharded(SimpleNamespace(strategy=DDPStrategy())) and not ema._off
    with pytest.warns(UserWarning, match=r"EMA is off for this run: .*sharded strategy \(ModelParallelStrategy\)"):
        assert ema._sharded(SimpleNamespace(strategy=ModelParallelStrategy()))
    assert ema._off and not ema.should_update(step_idx=0)
    checkpoint = {"state_dict": {"w": torch.ones(1)}}
    ema.on_save_checkpoint(None, None, checkpoint)  # type: ignore[arg-type]
    ema.on_train_end(None, None)  # type: ignore[arg-type]
    ema.on_fit_start(None, None)  # type: ignore[arg-type]
    assert checkpoint == {"state_dict": {"w": torch.ones(1)}}


def test_a_second_average_is_refused(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    with pytest.raises(InvalidArgumentError, match=r"2 weight-averaging callbacks \(EMA, EMAWeightAveraging\)"):
        trainer(tmp_path, [EMA(), EMAWeightAveraging()], max_steps=1).fit(UserClassifier(), loader())


def test_a_module_with_an_attribute_that_cannot_be_copied(tmp_path):
    """LightningCLI's optimizer factories can hold a lock (under DDP): the average copies the network only."""
    import threading

    module = UserClassifier()
    module.factory = threading.Lock()  # what deepcopy refuses
    keep = KeepAverage(ema := EMA(decay=0.5))
    trainer(tmp_path, [ema, keep], max_steps=2).fit(module, loader())
    assert isinstance(module.factory, type(threading.Lock()))  # put back
    assert not hasattr(keep.average.module, "factory")


def test_one_instance_serves_several_fits_and_a_failed_fit_leaves_nothing_behind(tmp_path):
    """A sweep or cross-validation reuses the callback: every fit averages from its own start."""
    ema = EMA(decay=0.5)
    keep = KeepAverage(ema)
    trainer(tmp_path, [ema, keep], max_steps=3).fit(UserClassifier(), loader())
    module = UserClassifier()
    start = {name: p.detach().clone() for name, p in module.named_parameters()}
    trainer(tmp_path, [ema, keep], max_steps=3).fit(module, loader())
    assert int(keep.average.n_averaged) == 3
    assert any(not torch.equal(p, start[name]) for name, p in module.named_parameters())

    class Fails(UserClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 1:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, [ema], max_steps=3).fit(Fails(), loader())
    assert ema._average_model is None  # no stale average for a later validate / test


def test_a_run_that_ends_before_the_first_update_keeps_its_weights(tmp_path):
    record = RecordWeights()
    module = UserClassifier()
    trainer(tmp_path, [record, EMA(update_starting_at_step=100)], max_steps=3).fit(module, loader())
    for name, value in module.named_parameters():
        assert torch.equal(value, record.steps[-1][name]), name  # not the copy taken at the start
