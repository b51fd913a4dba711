"""``CausalLanguageModel``: GPT-2-style next-token pre-training, perplexity, and text generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel, PreTrainedTokenizerBase
from typing_extensions import override

from lit_llm.compression.distillation import mark_distillation_targets
from lit_llm.hf import load_tokenizer
from lit_llm.modules.best_checkpoint import export_best, output_dir
from lit_llm.modules.building import check_export_target, check_layer_decay
from lit_llm.modules.contract import read_datamodule
from lit_llm.modules.language_model import (
    TokenStats,
    build_language_model,
    check_block_size,
    exact_step_loss,
    finish_eval_epoch,
    log_train_step,
    normalize_step,
    restore_datamodule_tokenizer,
    store_datamodule_tokenizer,
)
from lit_llm.text.masking import IGNORE_INDEX
from lit_llm.training.optim import optimizers_for
from lit_llm.training.token_loss import StepTokenNormalizer, causal_targets, token_cross_entropy

__all__ = ["CausalLanguageModel"]


class CausalLanguageModel(pl.LightningModule):
    """Causal-LM training of an ``AutoModelForCausalLM``: every non-padding token after the first is a target.

    The loss sent to backward is the exact mean over all target tokens of the optimizer step, across
    gradient accumulation and ranks (``exact_token_loss``, see ``lit_llm.training.token_loss``); with padded
    batches of unequal lengths the usual mean of micro-batch means is biased. Logs ``train|val|test/loss``,
    ``/perplexity`` and ``/accuracy`` (next-token accuracy). ``predict_step`` and :meth:`generate` turn
    prompts into text.

    Args:
        model: a directory / hub id or a config dict with ``model_type`` (from scratch; ``vocab_size`` follows
            the tokenizer).
        tokenizer: a directory or hub id; default the model's directory, or the datamodule's ``tokenizer``.
        optimizer: optimizer factory (LightningCLI ``OptimizerCallable``).
        lr_scheduler: optional scheduler factory, stepped every optimizer step.
        layer_decay: layer-wise LR decay in (0, 1].
        gradient_checkpointing: recompute activations in backward to save memory.
        exact_token_loss: normalize by the step's target tokens (True) or per micro-batch mean (False).
        max_new_tokens: tokens generated per prompt by ``predict_step`` / :meth:`generate`.
        do_sample: sample (True) or greedy decoding (False).
        temperature: sampling temperature.
        top_k: sample among the ``top_k`` most likely tokens (0: all).
        top_p: nucleus sampling threshold.
        compile: ``torch.compile`` the model in place.
        export_dir: where the HF export goes at fit end; default ``<default_root_dir>/export``; must be new or empty.
        export: whether to export at fit end.
        report_dir: where the test report (``lm_report.json``) goes; default ``<default_root_dir>/reports``.

    Raises:
        ValueError: bad generation settings, ``block_size`` over the model's positions.

    Example::
        lm = CausalLanguageModel(model={"model_type": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4})
        Trainer(max_steps=1000).fit(lm, TextCorpusDataModule(data_files="corpus.txt", train_tokenizer="bpe"))
        lm.generate(["Paris is"])
    """

    def __init__(
        self,
        model: str | dict[str, Any],
        tokenizer: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        layer_decay: float | None = None,
        gradient_checkpointing: bool = False,
        exact_token_loss: bool = True,
        max_new_tokens: int = 50,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 1.0,
        compile: bool = False,
        export_dir: str | None = None,
        export: bool = True,
        report_dir: str | None = None,
    ) -> None:
        super().__init__()
        check_layer_decay("CausalLanguageModel", layer_decay)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be >= 1.")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature!r} must be > 0 (use do_sample=False for greedy decoding).")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p={top_p!r} must be in (0, 1].")
        self.generation = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature,
                           "top_k": top_k, "top_p": top_p}
        # Factories are not plain data: keep them out of the checkpoint so it loads with weights_only=True.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.model_spec = model
        self.tokenizer_name = tokenizer or (model if isinstance(model, str) else None)
        self.optimizer_factory, self.lr_scheduler_factory, self.layer_decay = optimizer, lr_scheduler, layer_decay
        self.gradient_checkpointing = gradient_checkpointing
        self.export_dir, self.export, self.report_dir = export_dir, export, report_dir
        self.exact_token_loss = exact_token_loss
        self.normalizer = StepTokenNormalizer() if exact_token_loss else None
        self.val_stats, self.test_stats = TokenStats(), TokenStats()
        self.export_path: Path | None = None
        self.report_path: Path | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.model: torch.nn.Module | None = None
        if self.tokenizer_name is not None:
            self._build(load_tokenizer(self.tokenizer_name))

    def _build(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        if tokenizer is not None and tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token  # GPT-2 ships without a pad token; padding is masked anyway
        self.model = build_language_model("CausalLanguageModel", AutoModelForCausalLM, self.model_spec, tokenizer,
                                          gradient_checkpointing=self.gradient_checkpointing,
                                          compile=self.hparams["compile"])
        self.tokenizer = tokenizer

    @override
    def setup(self, stage: str) -> None:
        data = read_datamodule(self)
        if self.model is None:
            self._build(data.tokenizer)
        assert self.model is not None
        check_block_size(self.model, self.model_spec, data.block_size)
        check_export_target(self, stage, self.export_dir, self.export)

    @override
    def configure_model(self) -> None:
        # Lightning calls this after setup(), which has built the model already. A callback that copies the module
        # in its own setup, before ours (Lightning's WeightAveraging / EMAWeightAveraging), calls it first: build
        # the model then, or the callback would average a module with no parameters, silently. Without a trainer
        # (load_from_checkpoint calls this too) there is no data to build from.
        if self.model is None and self._trainer is not None:
            self._build(read_datamodule(self).tokenizer)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        store_datamodule_tokenizer(self, checkpoint)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_datamodule_tokenizer(self, checkpoint)

    @override
    def configure_optimizers(self) -> Any:
        assert self.model is not None, "setup() builds the model before the optimizer"
        return optimizers_for(self.model, self.optimizer_factory, self.lr_scheduler_factory, self.layer_decay)

    def _loss(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor | None]:
        assert self.model is not None
        attention_mask = batch.get("attention_mask")
        labels = batch.get("labels")
        if labels is None:
            labels = batch["input_ids"]
            if attention_mask is not None:
                labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)  # no target on padding
        logits = self.model(input_ids=batch["input_ids"], attention_mask=attention_mask).logits  # (B, T, V)
        logits, targets = causal_targets(logits, labels)  # (B, T-1, V), (B, T-1)
        loss_sum, count = token_cross_entropy(logits, targets)
        valid = targets != IGNORE_INDEX
        # Position t of the logits predicts token t + 1: the last position has no target.
        reduction: Literal["mean", "sum"] = "sum" if self.exact_token_loss else "mean"
        mark_distillation_targets(self, torch.nn.functional.pad(valid, (0, 1)), reduction)
        correct = (logits.detach().argmax(-1)[valid] == targets[valid]).sum()
        return loss_sum, count, correct, None

    # ---------------------------------------------------------------- steps
    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss_sum, count, correct, extra = self._loss(batch, "train")
        log_train_step(self, loss_sum, count, correct, len(batch["input_ids"]))
        return exact_step_loss(self.normalizer, loss_sum, count, extra)

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.normalizer is not None:
            normalize_step(self, self.normalizer)

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_stats.update(*self._loss(batch, "val")[:3])

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.test_stats.update(*self._loss(batch, "test")[:3])

    @override
    def on_validation_epoch_end(self) -> None:
        finish_eval_epoch(self, self.val_stats, "val")

    @override
    def on_test_epoch_end(self) -> None:
        self.report_path = finish_eval_epoch(self, self.test_stats, "test", self.report_dir) or self.report_path

    @override
    def on_fit_end(self) -> None:
        assert self.model is not None
        path = export_best(self, cast(PreTrainedModel, self.model), self.tokenizer,
                           output_dir(self, self.export_dir, "export"), self.export)
        self.export_path = path or self.export_path

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompts: list[str], **overrides: Any) -> list[str]:
        """Continue each prompt; returns the generated continuations (prompt excluded).

        Args:
            prompts: the texts to continue.
            overrides: generation settings for this call (``max_new_tokens``, ``do_sample``, ...).

        Example::
            CausalLanguageModel(model="runs/gpt2/export").generate(["Once upon a time"], max_new_tokens=20)
        """
        assert self.model is not None and self.tokenizer is not None
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"  # generation appends on the right, so prompts must end at the same column
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        finally:
            tok.padding_side = side
        settings = {**self.generation, **overrides}
        if not settings["do_sample"]:
            settings = {k: v for k, v in settings.items() if k not in ("temperature", "top_k", "top_p")}
        was_training = self.model.training
        self.model.eval()
        try:
            model = cast(GenerationMixin, self.model)  # a *LMHeadModel: PreTrainedModel + GenerationMixin
            out = model.generate(**enc, pad_token_id=tok.pad_token_id, **settings)  # (B, T_prompt + new)
        finally:
            self.model.train(was_training)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, str]]:
        """A batch of prompts (a list of strings, or a dict with ``prompt`` or ``text``) -> generated texts."""
        prompts = batch if isinstance(batch, list) else batch.get("prompt", batch.get("text"))
        return [{"prompt": p, "generated": g} for p, g in zip(prompts, self.generate(list(prompts)))]
