"""``CausalLanguageModel``: GPT-2-style next-token pre-training, perplexity, and text generation."""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedTokenizerBase
from typing_extensions import override

from lit_llm.compression.distillation import mark_distillation_targets
from lit_llm.text.masking import IGNORE_INDEX
from lit_llm.modules.masked_lm import LanguageModelBase
from lit_llm.training.token_loss import causal_targets, token_cross_entropy

__all__ = ["CausalLanguageModel"]


class CausalLanguageModel(LanguageModelBase):
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
        export_dir: where the HF export goes at fit end; default ``<default_root_dir>/export``.
        export: whether to export at fit end.

    Raises:
        ValueError: bad generation settings, ``block_size`` over the model's positions.

    Example::
        lm = CausalLanguageModel(model={"model_type": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4})
        Trainer(max_steps=1000).fit(lm, TextCorpusDataModule(data_files="corpus.txt", train_tokenizer="bpe"))
        lm.generate(["Paris is"])
    """

    auto_class = AutoModelForCausalLM
    module_name = "CausalLanguageModel"

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
        export_dir: str | None = None,
        export: bool = True,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be >= 1.")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature!r} must be > 0 (use do_sample=False for greedy decoding).")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p={top_p!r} must be in (0, 1].")
        self.generation = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature,
                           "top_k": top_k, "top_p": top_p}
        super().__init__(model, tokenizer, optimizer, lr_scheduler, layer_decay, gradient_checkpointing,
                         exact_token_loss, export_dir, export)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])

    @override
    def _check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token  # GPT-2 ships without a pad token; padding is masked anyway

    @override
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
