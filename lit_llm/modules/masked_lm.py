"""``MaskedLanguageModel``: BERT-style masked-LM pre-training (optionally with next-sentence or sentence-order
prediction)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import ModelParallelStrategy
from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, PreTrainedModel, PreTrainedTokenizerBase
from typing_extensions import override

from lit_llm.compression.distillation import mark_distillation_targets
from lit_llm.errors import InvalidArgumentError
from lit_llm.hf import config_size, has_next_sentence_head, load_tokenizer
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
from lit_llm.text.masking import mask_tokens
from lit_llm.text.sentence_order import check_nsp_negatives
from lit_llm.training.optim import optimizers_for
from lit_llm.training.token_loss import StepTokenNormalizer, token_cross_entropy

__all__ = ["MaskedLanguageModel", "SentencePairHead"]

_VAL_MASK_SEED = 1234  # validation masks are the same every epoch, so val/loss curves compare like with like


class SentencePairHead(torch.nn.Module):
    """BERT's pooler and next-sentence classifier (dense + tanh on the first token's last hidden state, then two
    logits), for a model whose transformers pre-training class has no such head (RoFormer, RoBERTa, ALBERT, ...).

    It is a pre-training head, kept in lit-llm's checkpoints and not in the export: fine-tuning starts its own.

    Example::
        head = SentencePairHead(hidden_size=128)
        logits = head(hidden_states)  # (B, T, 128) -> (B, 2)
    """

    def __init__(self, hidden_size: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(hidden_size, hidden_size)
        self.classifier = torch.nn.Linear(hidden_size, 2)
        for layer in (self.dense, self.classifier):  # as transformers initializes BERT's
            torch.nn.init.normal_(layer.weight, std=init_std)
            torch.nn.init.zeros_(layer.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.dense(hidden_states[:, 0])))


class MaskedLanguageModel(pl.LightningModule):
    """Masked-LM pre-training of an ``AutoModelForMaskedLM`` (``AutoModelForPreTraining`` with ``nsp`` on BERT-likes).

    Every batch drawn is masked afresh (dynamic masking): ``mlm_probability`` of the tokens (of the words,
    with ``whole_word_masking``) become targets; 80% of them turn into ``[MASK]``, 10% into a random token,
    10% stay. Special tokens and padding are never targets. A batch that already holds ``labels`` is used
    as is. The loss sent to backward is the exact mean over all target tokens of the optimizer step,
    across gradient accumulation and ranks (``exact_token_loss``, see ``lit_llm.training.token_loss``). Logs
    ``train|val|test/loss``, ``/perplexity`` and ``/accuracy`` (masked-token accuracy).

    Args:
        model: a directory / hub id (continued pre-training) or a config dict with ``model_type`` (from scratch;
            ``vocab_size`` follows the tokenizer).
        tokenizer: a directory or hub id; default the model's directory, or the datamodule's ``tokenizer``.
        optimizer: optimizer factory (LightningCLI ``OptimizerCallable``).
        lr_scheduler: optional scheduler factory, stepped every optimizer step.
        layer_decay: layer-wise LR decay in (0, 1].
        gradient_checkpointing: recompute activations in backward to save memory.
        mlm_probability: fraction of tokens (or words) selected as targets.
        mask_replace_prob: fraction of targets replaced with ``[MASK]``.
        random_replace_prob: fraction of targets replaced with a random token.
        whole_word_masking: select whole words (needs the batch's ``word_starts``).
        nsp: add a sentence-pair head and loss (the batch needs ``next_sentence_label``, e.g.
            ``TextCorpusDataModule(nsp=True)``): BERT's own (``AutoModelForPreTraining``, whose pooler the export
            keeps) where transformers' pre-training class has it, else :class:`SentencePairHead` on the masked LM
            (any architecture, e.g. RoFormer; not exported).
        nsp_negatives: which pairs the sentence-pair head tells apart, as the datamodule built them:
            ``"random"`` (BERT's next-sentence prediction, logged as ``nsp_loss`` / ``nsp_accuracy``) or
            ``"swapped"`` (ALBERT's sentence-order prediction, ``TextCorpusDataModule(nsp_negatives="swapped")``,
            logged as ``sop_loss`` / ``sop_accuracy``). Same head and loss; a datamodule that says otherwise is
            refused at fit start.
        exact_token_loss: normalize by the step's target tokens (True) or per micro-batch mean (False).
        sparse_prediction: run the LM head only on the ~15% of positions that are targets (same loss and
            gradients, less compute: the vocabulary projection is often the largest matmul of a small model).
            Used when the model has a single head module next to its encoder (BERT, RoBERTa, ...); other
            models, and ``nsp`` on BERT's ``AutoModelForPreTraining``, run the head densely.
        masking_seed: seed of the masking generator (None: the global RNG, seeded by ``seed_everything``).
        compile: ``torch.compile`` the model in place.
        export_dir: where the HF export goes at fit end; default ``<default_root_dir>/export``; must be new or empty.
        export: whether to export at fit end.
        report_dir: where the test report (``lm_report.json``) goes; default ``<default_root_dir>/reports``.

    Raises:
        ValueError: bad probabilities, a tokenizer without a mask token, ``block_size`` over the model's positions,
            ``nsp_negatives`` unknown, without ``nsp`` or unlike the datamodule's.

    Example::
        model = MaskedLanguageModel(model="data/models/all-MiniLM-L6-v2", whole_word_masking=True)
        Trainer(max_steps=1000, accumulate_grad_batches=4).fit(model, TextCorpusDataModule(...))
    """

    module_name = "MaskedLanguageModel"

    def __init__(
        self,
        model: str | dict[str, Any],
        tokenizer: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        layer_decay: float | None = None,
        gradient_checkpointing: bool = False,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        whole_word_masking: bool = False,
        nsp: bool = False,
        nsp_negatives: Literal["random", "swapped"] = "random",
        exact_token_loss: bool = True,
        sparse_prediction: bool = True,
        masking_seed: int | None = None,
        compile: bool = False,
        export_dir: str | None = None,
        export: bool = True,
        report_dir: str | None = None,
    ) -> None:
        super().__init__()
        check_layer_decay("MaskedLanguageModel", layer_decay)
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability={mlm_probability!r} must be in (0, 1), e.g. 0.15 as in BERT.")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1:
            raise ValueError(
                f"mask_replace_prob={mask_replace_prob!r} + random_replace_prob={random_replace_prob!r} must be "
                "non-negative and at most 1 (BERT: 0.8 and 0.1)."
            )
        check_nsp_negatives(nsp, nsp_negatives)
        # Factories are not plain data: keep them out of the checkpoint so it loads with weights_only=True.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.model_spec = model
        self.tokenizer_name = tokenizer or (model if isinstance(model, str) else None)
        self.optimizer_factory, self.lr_scheduler_factory, self.layer_decay = optimizer, lr_scheduler, layer_decay
        self.gradient_checkpointing = gradient_checkpointing
        self.export_dir, self.export, self.report_dir = export_dir, export, report_dir
        self.nsp_negatives = nsp_negatives
        self.auto_class: Any = AutoModelForMaskedLM  # _build sets AutoModelForPreTraining for BERT's own nsp head
        self.pair_head: SentencePairHead | None = None
        self.mlm_probability, self.mask_replace_prob = mlm_probability, mask_replace_prob
        self.random_replace_prob, self.whole_word_masking, self.nsp = random_replace_prob, whole_word_masking, nsp
        self.masking_seed = masking_seed
        self.sparse_prediction = sparse_prediction
        self.exact_token_loss = exact_token_loss
        self.normalizer = StepTokenNormalizer() if exact_token_loss else None
        self.val_stats, self.test_stats = TokenStats(), TokenStats()
        self.export_path: Path | None = None
        self.report_path: Path | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.model: torch.nn.Module | None = None
        self._generators: dict[str, torch.Generator] = {}
        self._pending_generator_state: torch.Tensor | None = None
        if self.tokenizer_name is not None:
            self._build(load_tokenizer(self.tokenizer_name))

    def _build(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        if tokenizer is not None:
            self._check_tokenizer(tokenizer)
        native_pair_head = self.nsp and has_next_sentence_head(self.model_spec)
        self.auto_class = AutoModelForPreTraining if native_pair_head else AutoModelForMaskedLM
        self.model = build_language_model("MaskedLanguageModel", self.auto_class, self.model_spec, tokenizer,
                                          gradient_checkpointing=self.gradient_checkpointing,
                                          compile=self.hparams["compile"])
        if self.nsp and not native_pair_head:
            config = self.model.config
            hidden = config_size(config, "hidden_size")
            assert hidden is not None, f"{type(config).__name__} has no hidden size"
            self.pair_head = SentencePairHead(hidden, getattr(config, "initializer_range", 0.02))
        self.tokenizer = tokenizer

    @override
    def setup(self, stage: str) -> None:
        data = read_datamodule(self)
        if self.nsp and data.nsp_negatives is not None and data.nsp_negatives != self.nsp_negatives:
            raise InvalidArgumentError(
                f"MaskedLanguageModel(nsp_negatives={self.nsp_negatives!r}) but the datamodule builds "
                f"nsp_negatives={data.nsp_negatives!r} pairs: the head would learn one task and be logged as the "
                "other. Set the same value on both (model.init_args.nsp_negatives and data.init_args.nsp_negatives)."
            )
        if self.model is None:
            self._build(data.tokenizer)
        assert self.model is not None
        if self.pair_head is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            # FSDP2 shards the HF model only (lit_llm.strategies.shard_transformer): a head beside it would train
            # unsynchronized on each rank
            raise InvalidArgumentError(
                f"MaskedLanguageModel(nsp=True) on {type(self.model).__name__} keeps lit-llm's SentencePairHead "
                f"beside the model, which {type(self.trainer.strategy).__name__} does not shard or synchronize. "
                "Use DDP (--trainer.strategy ddp), or an architecture with BERT's own head (model_type: bert)."
            )
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
    def configure_optimizers(self) -> Any:
        assert self.model is not None, "setup() builds the model before the optimizer"
        return optimizers_for(self.model, self.optimizer_factory, self.lr_scheduler_factory, self.layer_decay,
                              extra=self.pair_head)

    def _check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if tokenizer.mask_token_id is None:
            raise ValueError(
                f"tokenizer {self.tokenizer_name or type(tokenizer).__name__!r} has no mask token, so it cannot be "
                "used "
                "for masked-LM pre-training. For a GPT-2-style model use lit_llm.modules.CausalLanguageModel; or "
                "train a tokenizer with a mask token (TextCorpusDataModule(train_tokenizer='wordpiece'))."
            )

    def _generator(self, stage: str, device: torch.device) -> torch.Generator | None:
        if stage == "train" and self.masking_seed is None:
            return None
        gen = self._generators.get(stage)
        if gen is None or gen.device != device:
            seed = self.masking_seed if stage == "train" else _VAL_MASK_SEED
            gen = torch.Generator(device=device).manual_seed(int(seed or 0) + self.global_rank)  # None returned above
            if stage == "train" and self._pending_generator_state is not None:
                gen.set_state(self._pending_generator_state)
                self._pending_generator_state = None
            self._generators[stage] = gen
        return gen

    @override
    def on_validation_epoch_start(self) -> None:
        self._generators.pop("val", None)  # same masks every validation run

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # With masking_seed, a resumed run continues the same sequence of masks.
        if "train" in self._generators:
            checkpoint["masking_generator_state"] = self._generators["train"].get_state()
        store_datamodule_tokenizer(self, checkpoint)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied when the first batch shows the device (a generator's state is tied to its device type).
        self._pending_generator_state = checkpoint.get("masking_generator_state")
        restore_datamodule_tokenizer(self, checkpoint)

    def _head_module(self) -> torch.nn.Module | None:
        """The LM head for sparse prediction: the model's only child besides its encoder, else None."""
        if not self.sparse_prediction or self.auto_class is AutoModelForPreTraining or self.model is None:
            return None
        base = getattr(self.model, "base_model_prefix", "")
        others = [module for name, module in self.model.named_children() if name != base]
        return others[0] if len(others) == 1 else None

    def mask(self, batch: dict[str, torch.Tensor], stage: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked input_ids, labels)`` for a batch (its own ``labels`` if it has them)."""
        if "labels" in batch:
            return batch["input_ids"], batch["labels"]
        assert self.tokenizer is not None
        input_ids = batch["input_ids"]
        special = batch.get("special_tokens_mask")
        if special is None:
            special = batch["attention_mask"] == 0 if "attention_mask" in batch else torch.zeros_like(input_ids)
        if self.whole_word_masking and "word_starts" not in batch:
            raise ValueError(
                f"whole_word_masking=True needs the batch's 'word_starts' (got keys {sorted(batch)}); "
                "use TextCorpusDataModule or lit_llm.text.masking.word_start_flags."
            )
        out = mask_tokens(
            input_ids, special, mask_token_id=self.tokenizer.mask_token_id, vocab_size=len(self.tokenizer),
            mlm_probability=self.mlm_probability, mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            word_starts=batch["word_starts"] if self.whole_word_masking else None,
            generator=self._generator(stage, input_ids.device),
        )
        return out.input_ids, out.labels

    def _loss(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor | None]:
        assert self.model is not None
        input_ids, labels = self.mask(batch, stage)
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": batch.get("attention_mask")}
        if "token_type_ids" in batch:
            inputs["token_type_ids"] = batch["token_type_ids"]
        if self.pair_head is not None:
            inputs["output_hidden_states"] = True  # the head reads the first token's last hidden state
        target = labels != -100  # (B, T)
        mark_distillation_targets(self, target, "sum" if self.exact_token_loss else "mean")  # DistilBERT: masked only
        head = self._head_module()
        if head is not None:
            # Feed the head only the target positions: (B, T, H) -> (N, H), so logits are (N, V).
            handle = head.register_forward_pre_hook(
                lambda _module, args: (args[0][target], *args[1:]) if args and args[0].shape[:2] == target.shape
                else None
            )
            try:
                out = self.model(**inputs)
            finally:
                handle.remove()
            logits = out.logits  # (N, V)
            if logits.shape[:-1] == target.shape:  # the head was called in a way the hook could not see
                logits = logits[target]
            labels = labels[target]  # (N,)
        else:
            out = self.model(**inputs)
            native = self.auto_class is AutoModelForPreTraining
            logits = out.prediction_logits if native else out.logits  # (B, T, V)
            logits, labels = logits[target], labels[target]  # (N, V), (N,)
        loss_sum, count = token_cross_entropy(logits, labels)
        correct = (logits.detach().argmax(-1) == labels).sum()
        extra = None
        if self.nsp:
            if "next_sentence_label" not in batch:
                raise ValueError(
                    "nsp=True needs the batch's 'next_sentence_label': use TextCorpusDataModule(nsp=True)."
                )
            pair_logits = (out.seq_relationship_logits if self.pair_head is None
                           else self.pair_head(out.hidden_states[-1])).float()  # (B, 2)
            extra = torch.nn.functional.cross_entropy(pair_logits, batch["next_sentence_label"])
            task = "sop" if self.nsp_negatives == "swapped" else "nsp"
            pair_correct = (pair_logits.detach().argmax(-1) == batch["next_sentence_label"]).float().mean()
            self.log(f"{stage}/{task}_loss", extra.detach(), batch_size=len(input_ids))
            self.log(f"{stage}/{task}_accuracy", pair_correct, batch_size=len(input_ids))
        return loss_sum, count, correct, extra

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
