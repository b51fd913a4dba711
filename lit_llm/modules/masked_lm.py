"""``MaskedLanguageModel``: BERT-style masked-LM pre-training (optionally with next-sentence or sentence-order
prediction)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import SumMetric
from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, PreTrainedModel, PreTrainedTokenizerBase
from typing_extensions import override

from lit_llm.compression.distillation import mark_distillation_targets
from lit_llm.errors import InvalidArgumentError
from lit_llm.hf import ModelSpec, check_export_dir, load_model, load_tokenizer
from lit_llm.modules.best_checkpoint import export_best, output_dir
from lit_llm.text.masking import mask_tokens
from lit_llm.training.optim import optimizers_for
from lit_llm.text.sentence_order import check_nsp_negatives
from lit_llm.training.token_loss import StepTokenNormalizer, token_cross_entropy

__all__ = ["MaskedLanguageModel", "LanguageModelBase"]

_VAL_MASK_SEED = 1234  # validation masks are the same every epoch, so val/loss curves compare like with like


def max_positions(config: Any) -> int | None:
    """The longest sequence a model's position embeddings allow (None if unbounded, e.g. rotary)."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


class LanguageModelBase(pl.LightningModule):
    """What the masked- and causal-LM modules share: model / tokenizer loading, optimizers, exact token loss,
    token-weighted validation metrics and the HF export at fit end. Not used on its own."""

    auto_class: Any = None
    module_name = "LanguageModel"

    def __init__(
        self,
        model: ModelSpec,
        tokenizer: str | None,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
        layer_decay: float | None,
        gradient_checkpointing: bool,
        exact_token_loss: bool,
        export_dir: str | None,
        export: bool,
    ) -> None:
        super().__init__()
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay={layer_decay!r}: must be in (0, 1], e.g. 0.8.")
        self.model_spec = model
        self.tokenizer_name = tokenizer or (model if isinstance(model, str) else None)
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.layer_decay, self.gradient_checkpointing = layer_decay, gradient_checkpointing
        self.exact_token_loss, self.export_dir, self.export = exact_token_loss, export_dir, export
        self.export_path: Path | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.model: torch.nn.Module | None = None
        self.normalizer = StepTokenNormalizer()
        for stage in ("val", "test"):  # token-weighted sums, synced over ranks by torchmetrics
            for name in ("loss_sum", "targets", "correct"):
                setattr(self, f"_{stage}_{name}", SumMetric())
        if self.tokenizer_name is not None:
            self._build(load_tokenizer(self.tokenizer_name))

    # ---------------------------------------------------------------- model
    def _check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Hook for subclasses: refuse a tokenizer the objective cannot use."""

    def _build(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        overrides: dict[str, Any] = {}
        if isinstance(self.model_spec, dict):
            # From scratch: the embedding table follows the tokenizer (e.g. one trained on the corpus).
            overrides = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
        self.model = load_model(self.auto_class, self.model_spec, **overrides)
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes
        if self.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.model is None:
            tokenizer = getattr(datamodule, "tokenizer", None)
            if tokenizer is None and datamodule is not None and hasattr(datamodule, "prepare_data"):
                datamodule.setup(stage)  # the datamodule loads / trains its tokenizer in setup
                tokenizer = getattr(datamodule, "tokenizer", None)
            if tokenizer is None:
                raise ValueError(
                    f"{self.module_name}: model is a config dict and no tokenizer is known. Pass tokenizer=<dir or hub "
                    "id>, or use a datamodule with a `tokenizer` attribute (TextCorpusDataModule(train_tokenizer=...))."
                )
            self._build(tokenizer)
        assert self.model is not None
        block_size = getattr(datamodule, "block_size", None)
        limit = max_positions(self.model.config)
        if block_size is not None and limit is not None and block_size > limit:
            raise ValueError(
                f"the datamodule's block_size={block_size} is larger than the model's maximum positions ({limit}, "
                f"config of {self.model_spec if isinstance(self.model_spec, str) else 'the config dict'}): "
                f"set block_size <= {limit}."
            )
        if stage == "fit" and self.export:
            check_export_dir(output_dir(self, self.export_dir, "export"))

    @override
    def configure_optimizers(self) -> Any:
        assert self.model is not None, "setup() builds the model before the optimizer"
        return optimizers_for(self.model, self.optimizer_factory, self.lr_scheduler_factory, self.layer_decay)

    # ---------------------------------------------------------------- loss
    def _loss(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor | None]:
        """``(token loss sum, target count, correct predictions, extra per-example loss mean or None)``."""
        raise NotImplementedError

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss_sum, count, correct, extra = self._loss(batch, "train")
        mean = loss_sum.detach() / count.clamp(min=1)
        batch_size = len(batch["input_ids"])
        self.log("train/loss", mean, on_step=True, prog_bar=True, batch_size=batch_size)
        self.log("train/perplexity", torch.exp(mean), on_step=True, batch_size=batch_size)
        self.log("train/accuracy", correct / count.clamp(min=1), on_step=True, batch_size=batch_size)
        if not self.exact_token_loss:
            return loss_sum / count.clamp(min=1) + (extra if extra is not None else 0.0)
        # Backward the *sum*; on_before_optimizer_step divides by the step's token count (see token_loss.py).
        self.normalizer.add(count)
        if extra is not None:
            # The per-example term (NSP) gets weight count / N_step: micro-batch means averaged with weights
            # that sum to 1 over the step.
            loss_sum = loss_sum + extra * count
        return loss_sum

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.exact_token_loss and self.normalizer.pending is not None:
            strategy = self.trainer.strategy
            n_step = self.normalizer.scale(
                self.parameters(),
                accumulate=self.trainer.accumulate_grad_batches,
                world_size=self.trainer.world_size,
                all_reduce_sum=lambda t: strategy.reduce(t, reduce_op="sum"),
            )
            self.log("train/targets_per_step", n_step.float(), on_step=True, rank_zero_only=True)

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        loss_sum, count, correct, _ = self._loss(batch, stage)
        getattr(self, f"_{stage}_loss_sum").update(loss_sum)
        getattr(self, f"_{stage}_targets").update(count.float())
        getattr(self, f"_{stage}_correct").update(correct.float())

    def _log_epoch(self, stage: str) -> None:
        loss_sum = getattr(self, f"_{stage}_loss_sum").compute()
        targets = getattr(self, f"_{stage}_targets").compute().clamp(min=1)
        correct = getattr(self, f"_{stage}_correct").compute()
        mean = loss_sum / targets
        self.log_dict({f"{stage}/loss": mean, f"{stage}/perplexity": torch.exp(mean),
                       f"{stage}/accuracy": correct / targets}, prog_bar=stage == "val")
        for name in ("loss_sum", "targets", "correct"):
            getattr(self, f"_{stage}_{name}").reset()

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ---------------------------------------------------------------- export
    @override
    def on_fit_end(self) -> None:
        assert self.model is not None
        out = output_dir(self, self.export_dir, "export")
        path = export_best(self, cast(PreTrainedModel, self.model), self.tokenizer, out, self.export)
        self.export_path = path or self.export_path


class MaskedLanguageModel(LanguageModelBase):
    """Masked-LM pre-training of an ``AutoModelForMaskedLM`` (or ``AutoModelForPreTraining`` with ``nsp``).

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
        nsp: add BERT's next-sentence prediction head and loss (the batch needs ``next_sentence_label``,
            e.g. ``TextCorpusDataModule(nsp=True)``).
        nsp_negatives: which pairs the sentence-pair head tells apart, as the datamodule built them:
            ``"random"`` (BERT's next-sentence prediction, logged as ``nsp_loss`` / ``nsp_accuracy``) or
            ``"swapped"`` (ALBERT's sentence-order prediction, ``TextCorpusDataModule(nsp_negatives="swapped")``,
            logged as ``sop_loss`` / ``sop_accuracy``). Same head and loss; a datamodule that says otherwise is
            refused at fit start.
        exact_token_loss: normalize by the step's target tokens (True) or per micro-batch mean (False).
        sparse_prediction: run the LM head only on the ~15% of positions that are targets (same loss and
            gradients, less compute: the vocabulary projection is often the largest matmul of a small model).
            Used when the model has a single head module next to its encoder (BERT, RoBERTa, ...); other
            models, and ``nsp``, run the head densely.
        masking_seed: seed of the masking generator (None: the global RNG, seeded by ``seed_everything``).
        export_dir: where the HF export goes at fit end; default ``<default_root_dir>/export``.
        export: whether to export at fit end.

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
        export_dir: str | None = None,
        export: bool = True,
    ) -> None:
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability={mlm_probability!r} must be in (0, 1), e.g. 0.15 as in BERT.")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1:
            raise ValueError(
                f"mask_replace_prob={mask_replace_prob!r} + random_replace_prob={random_replace_prob!r} must be "
                "non-negative and at most 1 (BERT: 0.8 and 0.1)."
            )
        check_nsp_negatives(nsp, nsp_negatives)
        self.nsp_negatives = nsp_negatives
        self.auto_class = AutoModelForPreTraining if nsp else AutoModelForMaskedLM
        self.mlm_probability, self.mask_replace_prob = mlm_probability, mask_replace_prob
        self.random_replace_prob, self.whole_word_masking, self.nsp = random_replace_prob, whole_word_masking, nsp
        self.masking_seed = masking_seed
        self.sparse_prediction = sparse_prediction
        self._generators: dict[str, torch.Generator] = {}
        self._pending_generator_state: torch.Tensor | None = None
        super().__init__(model, tokenizer, optimizer, lr_scheduler, layer_decay, gradient_checkpointing,
                         exact_token_loss, export_dir, export)
        # Factories are not plain data: keep them out of the checkpoint so it loads with weights_only=True.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])

    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        theirs = getattr(datamodule, "nsp_negatives", None) if getattr(datamodule, "nsp", False) else None
        if self.nsp and theirs is not None and theirs != self.nsp_negatives:
            raise InvalidArgumentError(
                f"MaskedLanguageModel(nsp_negatives={self.nsp_negatives!r}) but the datamodule builds "
                f"nsp_negatives={theirs!r} pairs: the head would learn one task and be logged as the other. "
                "Set the same value on both (model.init_args.nsp_negatives and data.init_args.nsp_negatives)."
            )
        super().setup(stage)

    @override
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

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied when the first batch shows the device (a generator's state is tied to its device type).
        self._pending_generator_state = checkpoint.get("masking_generator_state")

    def _head_module(self) -> torch.nn.Module | None:
        """The LM head for sparse prediction: the model's only child besides its encoder, else None."""
        if not self.sparse_prediction or self.nsp or self.model is None:
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

    @override
    def _loss(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor | None]:
        assert self.model is not None
        input_ids, labels = self.mask(batch, stage)
        inputs = {"input_ids": input_ids, "attention_mask": batch.get("attention_mask")}
        if "token_type_ids" in batch:
            inputs["token_type_ids"] = batch["token_type_ids"]
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
                logits = self.model(**inputs).logits  # (N, V)
            finally:
                handle.remove()
            if logits.shape[:-1] == target.shape:  # the head was called in a way the hook could not see
                logits = logits[target]
            labels = labels[target]  # (N,)
        else:
            out = self.model(**inputs)
            logits = out.prediction_logits if self.nsp else out.logits  # (B, T, V)
            logits, labels = logits[target], labels[target]  # (N, V), (N,)
        loss_sum, count = token_cross_entropy(logits, labels)
        correct = (logits.detach().argmax(-1) == labels).sum()
        extra = None
        if self.nsp:
            if "next_sentence_label" not in batch:
                raise ValueError(
                    "nsp=True needs the batch's 'next_sentence_label': use TextCorpusDataModule(nsp=True)."
                )
            pair_logits = out.seq_relationship_logits.float()  # (B, 2)
            extra = torch.nn.functional.cross_entropy(pair_logits, batch["next_sentence_label"])
            task = "sop" if self.nsp_negatives == "swapped" else "nsp"
            pair_correct = (pair_logits.detach().argmax(-1) == batch["next_sentence_label"]).float().mean()
            self.log(f"{stage}/{task}_loss", extra.detach(), batch_size=len(input_ids))
            self.log(f"{stage}/{task}_accuracy", pair_correct, batch_size=len(input_ids))
        return loss_sum, count, correct, extra
