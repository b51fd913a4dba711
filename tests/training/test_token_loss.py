"""Exact token-weighted loss: accumulation and data parallelism give the gradients of one big batch."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from lit_llm.modules.causal_lm import CausalLanguageModel
from lit_llm.training.token_loss import StepTokenNormalizer, causal_targets, scale_gradients, token_cross_entropy

LENGTHS = [12, 3, 4, 2, 12, 11, 5, 12]  # real tokens per row: micro-batches of 2 hold 13, 4, 21 and 15 targets
SEQ = 12


def rows(vocab: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in LENGTHS:
        ids = torch.randint(5, vocab, (SEQ,), generator=gen)
        mask = (torch.arange(SEQ) < n).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return out


def reference_grads(model_dir: Path) -> dict[str, torch.Tensor]:
    """Gradients of the mean token loss of all rows as one batch, computed without Lightning."""
    lm = CausalLanguageModel(model=str(model_dir), export=False)
    data = rows(len(lm.tokenizer))
    batch = {k: torch.stack([r[k] for r in data]) for k in data[0]}
    loss_sum, count, _, _ = lm._loss(batch, "train")
    (loss_sum / count).backward()
    return {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}


def rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    num = sum(((a[k] - b[k]) ** 2).sum() for k in a) ** 0.5
    return float(num / sum((b[k] ** 2).sum() for k in b) ** 0.5)


class SaveGrads(Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            torch.save({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}, self.path)


def trainer_grads(model_dir: Path, tmp_path: Path, batch_size: int, accumulate: int, exact: bool = True,
                  **trainer_kwargs) -> dict[str, torch.Tensor]:
    lm = CausalLanguageModel(model=str(model_dir), export=False, exact_token_loss=exact,
                             optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    loader = DataLoader(rows(len(lm.tokenizer)), batch_size=batch_size, shuffle=False)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "grads.pt"
    trainer_kwargs.setdefault("devices", 1)
    trainer = Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=accumulate, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=[SaveGrads(path)], **trainer_kwargs)
    trainer.fit(lm, loader)
    return torch.load(path, weights_only=True)


def test_token_cross_entropy_sum_and_count():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])  # (1, 2, 2)
    labels = torch.tensor([[1, -100]])
    loss_sum, count = token_cross_entropy(logits, labels)
    assert count.item() == 1
    assert loss_sum.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-7)
    shifted_logits, shifted_labels = causal_targets(torch.zeros(2, 5, 3), torch.arange(10).view(2, 5))
    assert shifted_logits.shape == (2, 4, 3) and shifted_labels[0].tolist() == [1, 2, 3, 4]


def test_normalizer_in_a_plain_loop_matches_one_batch():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(10, 4)
    y = torch.tensor([0, 1, -100, 2, -100, -100, 1, 0, 2, -100])
    token_cross_entropy(layer(x), y)[0].div(6).backward()
    expected = layer.weight.grad.clone()
    layer.weight.grad = None
    normalizer = StepTokenNormalizer()
    for chunk in ((0, 3), (3, 6), (6, 10)):  # 2, 0 and 4 targets
        loss_sum, count = token_cross_entropy(layer(x[slice(*chunk)]), y[slice(*chunk)])
        normalizer.add(count)
        loss_sum.backward()
    assert normalizer.scale(layer.parameters(), accumulate=1, world_size=1).item() == 6
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-5, atol=1e-8)
    assert normalizer.pending is None  # reset for the next step


def test_scale_gradients_skips_missing():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    a.grad = torch.full((2,), 3.0)
    scale_gradients([a, b], 0.5)
    assert a.grad.tolist() == [1.5, 1.5] and b.grad is None


def test_accumulation_equals_one_batch(tiny_gpt2_dir, tmp_path):
    expected = reference_grads(tiny_gpt2_dir)
    one_batch = trainer_grads(tiny_gpt2_dir, tmp_path / "a", batch_size=8, accumulate=1)
    accumulated = trainer_grads(tiny_gpt2_dir, tmp_path / "b", batch_size=2, accumulate=4)
    assert rel_err(one_batch, expected) < 1e-5
    assert rel_err(accumulated, expected) < 1e-5
    # the usual mean of micro-batch means is measurably off on the same data: the test has teeth
    mean_of_means = trainer_grads(tiny_gpt2_dir, tmp_path / "c", batch_size=2, accumulate=4, exact=False)
    assert rel_err(mean_of_means, expected) > 1e-2


@pytest.mark.slow
def test_two_ddp_processes_equal_one(tiny_gpt2_dir, tmp_path):
    expected = reference_grads(tiny_gpt2_dir)
    # 2 ranks x 2 micro-batches of 2 rows = the 8 rows, with unequal target counts per rank and micro-batch
    ddp = trainer_grads(tiny_gpt2_dir, tmp_path, batch_size=2, accumulate=2, devices=2, strategy="ddp_fork")
    assert rel_err(ddp, expected) < 1e-5
