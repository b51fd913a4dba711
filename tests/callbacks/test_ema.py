"""EMA: the average it keeps, where the average goes (validation, the module at the end), and its errors.

Checkpoints, resume and 2 processes: tests/callbacks/test_conformance.py; our modules built from the data and the
`lit-llm fit` -> export -> resume journey: tests/modules/test_weight_averaging.py."""

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


@pytest.mark.parametrize(("decay", "every"), [(0.5, 1), (0.9, 2)])
def test_the_module_ends_with_the_exponential_average_of_its_weights(tmp_path, decay, every):
    record, ema = RecordWeights(), EMA(decay=decay, update_every_n_steps=every)
    module = UserClassifier()
    trainer(tmp_path, [record, ema], max_steps=5).fit(module, loader())

    # Steps are 0-based for update_every_n_steps: the updates follow steps 0, every, 2 * every, ...
    updates = [weights for step, weights in enumerate(record.steps) if step % every == 0]
    expected = dict(updates[0])
    for weights in updates[1:]:
        expected = {name: decay * expected[name] + (1 - decay) * weights[name] for name in expected}
    assert int(ema._average_model.n_averaged) == len(updates)
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
    module = UserClassifier()
    # Probe after EMA: EMA swaps the average in at validation start and the raw weights back at its end.
    trainer(tmp_path, [ema, Probe()], max_steps=4, limit_val_batches=1, val_check_interval=2).fit(
        module, loader(), loader(8))
    average_at_val = ema._average_model.module.model.classifier.weight.detach()
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


def test_a_resume_with_another_decay_says_so(tmp_path):
    ema = EMA(decay=0.9)
    with pytest.warns(UserWarning, match=r"made with decay=0\.5, this run uses decay=0\.9"):
        ema.load_state_dict({"latest_update_step": 3, "decay": 0.5})
    assert ema._latest_update_step == 3


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
