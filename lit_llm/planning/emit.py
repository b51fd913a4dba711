"""Write the recommended plan as a LightningCLI config that ``lit-llm fit --config FILE`` runs.

The config holds the trainer (accelerator, devices, nodes, strategy, precision, accumulation, steps), the
warmup callback (and the LoRA callback for a LoRA / QLoRA plan), the task's module (with gradient checkpointing
and the chosen optimizer) and a datamodule whose batch size is the micro-batch. Data paths are placeholders
unless given: the planner knows no data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lit_llm.planning.plan import Candidate, PlanRequest

__all__ = ["MODULES", "LAYER_CLASSES", "plan_config", "emit_config"]

MODULES = {
    "mlm": "lit_llm.modules.masked_lm.MaskedLanguageModel",
    "clm": "lit_llm.modules.causal_lm.CausalLanguageModel",
    "classification": "lit_llm.modules.SequenceClassifier",
}
LAYER_CLASSES = {  # what FSDP wraps as one unit (one all-gather per block)
    "bert": "transformers.models.bert.modeling_bert.BertLayer",
    "roberta": "transformers.models.roberta.modeling_roberta.RobertaLayer",
    "electra": "transformers.models.electra.modeling_electra.ElectraLayer",
    "gpt2": "transformers.models.gpt2.modeling_gpt2.GPT2Block",
    "llama": "transformers.models.llama.modeling_llama.LlamaDecoderLayer",
    "mistral": "transformers.models.mistral.modeling_mistral.MistralDecoderLayer",
    "qwen2": "transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer",
}
_SHARDING = {"fsdp-full": "FULL_SHARD", "fsdp-grad-op": "SHARD_GRAD_OP", "fsdp-hybrid": "HYBRID_SHARD"}
_PLACEHOLDER = "CHANGE_ME"


def _model_spec(req: PlanRequest) -> str | dict[str, Any]:
    if req.model_spec is not None:
        return req.model_spec
    dims = req.model
    if dims.hub_id:
        return dims.hub_id
    return dims.hf_config_dict()  # from-scratch training: the config as lit_llm.hf.build_config reads it


def _trainer_section(req: PlanRequest, best: Candidate) -> dict[str, Any]:
    c = best.choice
    if c.strategy == "ddp":
        strategy: Any = "ddp" if req.world_size > 1 else "auto"
    else:
        init: dict[str, Any] = {"sharding_strategy": _SHARDING[c.strategy], "cpu_offload": c.offload}
        layer = LAYER_CLASSES.get(req.model.model_type or req.model.arch)
        if layer:
            init["auto_wrap_policy"] = [layer]
        strategy = {"class_path": "lightning.pytorch.strategies.FSDPStrategy", "init_args": init}
    trainer: dict[str, Any] = {
        "accelerator": "gpu" if req.hardware.is_gpu else "cpu",
        "devices": req.devices,
        "num_nodes": req.nodes,
        "strategy": strategy,
        "precision": c.precision,
        "accumulate_grad_batches": c.accumulation,
        "callbacks": [{"class_path": "lit_llm.callbacks.WarmupSchedule", "init_args": {"warmup": 0.06}}],
    }
    if c.adapter != "none":  # LoRA on every Linear of the blocks (the callback's default), QLoRA on an NF4 base
        lora: dict[str, Any] = {"rank": c.lora_rank}
        if c.adapter == "qlora":
            lora["quantize_base"] = "nf4"
        trainer["callbacks"].append({"class_path": "lit_llm.callbacks.LoRA", "init_args": lora})
    if req.total_steps is not None:
        trainer["max_steps"] = req.total_steps
    return trainer


def _data_section(req: PlanRequest, best: Candidate, tokenizer: str | None, data_path: str | None) -> dict[str, Any]:
    batch = best.choice.micro_batch
    if req.task == "classification":
        return {"class_path": "lit_llm.datamodules.TextClassificationDataModule",
                "init_args": {"tokenizer": tokenizer, "train_file": data_path or _PLACEHOLDER,
                              "max_length": req.seq_len, "batch_size": batch}}
    corpus: dict[str, Any] = {"data_files": data_path or _PLACEHOLDER, "block_size": req.seq_len, "batch_size": batch}
    if tokenizer is None:
        # from scratch: train a tokenizer of the planned vocabulary size on the corpus
        kind = "wordpiece" if req.model.arch == "bert" else "bpe"
        corpus.update(train_tokenizer=kind, vocab_size=req.model.vocab)
    else:
        corpus["tokenizer"] = tokenizer
    return {"class_path": "lit_llm.datamodules.corpus.TextCorpusDataModule", "init_args": corpus}


def plan_config(req: PlanRequest, best: Candidate, data_path: str | None = None, lr: float = 5e-5) -> dict[str, Any]:
    """The LightningCLI config (as a dict) for ``best``.

    A LoRA / QLoRA plan adds the :class:`~lit_llm.callbacks.LoRA` callback (rank, and ``quantize_base: nf4`` for
    QLoRA) to the trainer's callbacks.

    Args:
        req: the request the plan answered.
        best: the chosen candidate.
        data_path: the training data (a corpus file/glob for mlm/clm, a train file for classification).
        lr: the optimizer's learning rate.

    Raises:
        ValueError: a classification plan for a model given by dimensions only (no tokenizer to name).

    Example::
        cfg = plan_config(report.request, report.best, data_path="data/train.csv")
    """
    c = best.choice
    optimizer = "bitsandbytes.optim.AdamW8bit" if c.optimizer_8bit else "torch.optim.AdamW"
    spec = _model_spec(req)
    model_args: dict[str, Any] = {
        "model": spec,
        "gradient_checkpointing": c.checkpointing,
        "optimizer": {"class_path": optimizer, "init_args": {"lr": lr, "weight_decay": 0.01}},
    }
    tokenizer = spec if isinstance(spec, str) else None
    if req.task == "classification":
        if tokenizer is None:
            raise ValueError(
                f"model {req.model.name!r} is given by its dimensions: a classification config needs a tokenizer; "
                "give --model as an HF directory or hub id."
            )
        model_args["num_labels"] = req.num_labels
    return {
        "seed_everything": 42,
        "trainer": _trainer_section(req, best),
        "model": {"class_path": MODULES[req.task], "init_args": model_args},
        "data": _data_section(req, best, tokenizer, data_path),
    }


def emit_config(
    req: PlanRequest, best: Candidate, path: str | Path, data_path: str | None = None, reasons: Sequence[str] = ()
) -> Path:
    """Write :func:`plan_config` as YAML to ``path``, headed by the plan and its reasons as comments.

    Raises:
        FileExistsError: ``path`` exists (the planner never overwrites a file).

    Example::
        emit_config(report.request, report.best, "configs/pretrain/my_plan.yaml", data_path="data/wiki.txt")
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"--emit_config {str(path)!r} already exists; choose a new file name or move it away "
                              "(the planner never overwrites a file).")
    config = plan_config(req, best, data_path)
    header = [f"# lit-llm plan: {best.choice.label} on {req.devices} x {req.nodes} x {req.hardware.name}"]
    header += [f"#   {r}" for r in reasons]
    if data_path is None:
        header.append(f"# Replace {_PLACEHOLDER} with your data (or pass --data_path to lit-llm plan).")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False))
    return path
