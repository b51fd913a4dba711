"""Quantized models as deployable artifacts: int8 ONNX and bf16 for CPU serving, bitsandbytes 8/4-bit for CUDA.

Each ``export_*`` function writes one new directory (an existing non-empty one is refused, never overwritten)
that a fresh Python process loads with the serving library's public API only:

- :func:`export_int8_onnx` → ``model.int8.onnx`` (ONNX Runtime dynamic int8: int8 weights with one scale per output
  row, activations quantized per batch), ``config.json`` (labels), the tokenizer and ``lit_llm_artifact.json``
  (inputs, outputs, quantized layers). Served with ``onnxruntime.InferenceSession``.
- :func:`export_bf16` → an HF directory saved in bfloat16; ``from_pretrained(..., dtype=torch.bfloat16)``.
- :func:`export_bitsandbytes` → an HF directory of bitsandbytes int8 (LLM.int8) or 4-bit NF4 weights with the
  ``quantization_config`` in ``config.json``, so ``from_pretrained`` loads it quantized on CUDA.

:class:`OnnxRuntimeModel` puts an ONNX Runtime session behind the HF forward signature (keyword tensors in,
``.logits`` and, given ``labels``, ``.loss`` out), so a Lightning ``test_step`` evaluates the int8 artifact's own
kernels; :func:`load_int8_onnx` builds one from an artifact directory.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from lit_llm.hf import check_export_dir, export_pretrained, trust_remote_code
from lit_llm.compression.quantization import DEFAULT_SKIP, import_onnxruntime, quantizable_linear_names

__all__ = [
    "INT8_ONNX_FILE",
    "MANIFEST_FILE",
    "OnnxRuntimeModel",
    "OnnxRuntimeOutput",
    "cpu_flags",
    "export_bf16",
    "export_bitsandbytes",
    "export_int8_onnx",
    "load_int8_onnx",
    "onnx_int8_model",
]

INT8_ONNX_FILE = "model.int8.onnx"
MANIFEST_FILE = "lit_llm_artifact.json"
# ONNX Runtime's integer kernels: the int8 MatMuls of a dynamically quantized graph.
_INT8_OPS = ("MatMulInteger", "DynamicQuantizeMatMul")
WeightType = Literal["qint8", "quint8"]


def cpu_flags() -> dict[str, bool]:
    """Which int8 / bf16 instructions this CPU has (from ``/proc/cpuinfo``; all False where it cannot be read).

    ``avx512_vnni`` / ``amx_int8`` speed up int8 dot products, ``avx512_bf16`` / ``amx_bf16`` bf16 ones.

    Example::
        cpu_flags()["amx_bf16"]
    """
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {name: name in flags for name in wanted}


class _DropOrtPreprocessHint(logging.Filter):
    # quantize_dynamic logs a root-level "consider pre-processing" hint on every call; it is not actionable here.
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _module_path(node_name: str, linear_names: set[str]) -> str | None:
    """The Linear layer a MatMul/Gemm node of the exported graph belongs to, from the node's scope name.

    ``/inner/bert/encoder/layer.0/attention/self/query/MatMul`` → ``bert.encoder.layer.0.attention.self.query``
    (the exporter's own wrapper prefix is whatever comes before the longest suffix that names a Linear).
    """
    parts = node_name.strip("/").split("/")[:-1]
    dotted = ".".join(parts).split(".")
    for i in range(len(dotted)):
        candidate = ".".join(dotted[i:])
        if candidate in linear_names:
            return candidate
    return None


def _quantize_onnx(
    model: nn.Module, out_file: Path, skip: Iterable[str], weight_type: WeightType
) -> tuple[int, list[str]]:
    """Export ``model`` to ONNX and write its int8 version to ``out_file``; returns (int8 MatMuls, float Linears)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from lit_llm.commands.export import export_onnx

    names = set(quantizable_linear_names(model, skip))
    source = model
    if next((p.device.type for p in model.parameters()), "cpu") != "cpu":
        source = copy.deepcopy(model).cpu()  # the exporter traces with CPU example inputs
    was_training = source.training
    with tempfile.TemporaryDirectory() as tmp:
        float_file = Path(tmp) / "model.onnx"
        try:
            export_onnx(source, float_file)
        finally:
            source.train(was_training)
        graph = onnx.load(str(float_file), load_external_data=False).graph
        # Only the MatMuls of the chosen Linear layers: attention's activation x activation MatMuls and skipped
        # heads stay float, as they do in FakeQuantLinear's QAT.
        nodes = [n.name for n in graph.node if n.op_type == "MatMul" and _module_path(n.name, names)]
        hint = _DropOrtPreprocessHint()
        logging.getLogger().addFilter(hint)
        try:
            quantize_dynamic(
                float_file,
                out_file,
                per_channel=True,  # one scale per output row, as FakeQuantLinear trains for
                weight_type=QuantType.QInt8 if weight_type == "qint8" else QuantType.QUInt8,
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=nodes,
                extra_options={"MatMulConstBOnly": True},
            )
        finally:
            logging.getLogger().removeFilter(hint)
    quantized = onnx.load(str(out_file), load_external_data=False).graph
    int8_ops = sum(1 for n in quantized.node if n.op_type in _INT8_OPS)
    converted = {_module_path(n, names) for n in nodes}
    floats = sorted(n for n, m in model.named_modules() if type(m) is nn.Linear and n not in converted)
    return int8_ops, floats


def export_int8_onnx(
    model: nn.Module,
    out_dir: str | Path,
    tokenizer: Any = None,
    skip: Iterable[str] = DEFAULT_SKIP,
    weight_type: WeightType = "qint8",
) -> Path:
    """Write ``model`` as an ONNX Runtime int8 artifact directory for CPU serving.

    The directory holds ``model.int8.onnx`` (inputs ``input_ids``, ``attention_mask`` and whatever else the
    exporter declares, output ``logits``), ``config.json`` (``id2label``...), the tokenizer when given, and
    ``lit_llm_artifact.json``. ``model`` is left unchanged.

    Args:
        model: an HF model (or any module the ONNX exporter takes: keyword ``input_ids`` / ``attention_mask`` in,
            ``.logits`` out).
        out_dir: a new or empty directory.
        tokenizer: saved next to the model so the server tokenizes as training did.
        skip: regexes of Linear layer names kept in float (task heads by default).
        weight_type: ``qint8`` (signed int8 weights; ONNX Runtime's default and what ``scripts/bench_int8_backends.py``
            measured fastest) or ``quint8``.

    Raises:
        FileExistsError: ``out_dir`` holds files.
        ValueError: no Linear layer to quantize.
        ImportError: onnxruntime / onnx missing (install hint).

    Example::
        export_int8_onnx(model, "export-int8", tokenizer)
        session = onnxruntime.InferenceSession("export-int8/model.int8.onnx")
    """
    if weight_type not in ("qint8", "quint8"):
        raise ValueError(f"export_int8_onnx(weight_type={weight_type!r}): choose 'qint8' or 'quint8'.")
    quantizable_linear_names(model, skip)
    import_onnxruntime()
    out = check_export_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    int8_ops, floats = _quantize_onnx(model, out / INT8_ONNX_FILE, skip, weight_type)
    config = getattr(model, "config", None)
    if isinstance(config, PretrainedConfig):
        config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / INT8_ONNX_FILE), providers=["CPUExecutionProvider"])
    manifest = {
        "format": "onnxruntime-dynamic-int8",
        "file": INT8_ONNX_FILE,
        "inputs": [i.name for i in session.get_inputs()],
        "outputs": [o.name for o in session.get_outputs()],
        "weight_type": weight_type,
        "per_channel": True,
        "int8_matmuls": int8_ops,
        "float_linear_layers": floats,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


@dataclass
class OnnxRuntimeOutput(ModelOutput):
    """What :class:`OnnxRuntimeModel` returns: the fields our modules' steps read from an HF output."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime CPU session behind an HF model's forward: ``model(input_ids=..., labels=...)``.

    Inputs the graph declares but the caller omits get HF's defaults (``attention_mask`` ones, ``token_type_ids``
    zeros); ``logits`` come back on the device of ``input_ids``. With ``labels`` the loss is computed as the HF
    head would (cross-entropy over classes or tokens with ``-100`` ignored, BCE for multi-label, MSE for
    regression, shifted for causal LMs). Inference only: it has no parameters.

    Args:
        path: an ``.onnx`` file.
        config: the HF config of the model (labels, ``problem_type``); optional.
        num_threads: ONNX Runtime intra-op threads; default ``torch.get_num_threads()``.

    Example::
        model = OnnxRuntimeModel("export-int8/model.int8.onnx")
        model(input_ids=ids, attention_mask=mask).logits
    """

    def __init__(self, path: str | Path, config: PretrainedConfig | None = None, num_threads: int | None = None):
        super().__init__()
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config = config
        self.size_bytes = Path(path).stat().st_size
        self.int8_layers = sum(1 for node in _graph_ops(path) if node in _INT8_OPS)
        self.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> OnnxRuntimeOutput:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        defaults = {"attention_mask": torch.ones_like, "token_type_ids": torch.zeros_like}
        feed = {}
        for name in self.input_names:
            value = given.get(name)
            if value is None:
                if name not in defaults:
                    raise ValueError(f"the ONNX model needs input {name!r}; inputs it takes: {self.input_names}")
                value = defaults[name](input_ids)
            feed[name] = value.detach().to("cpu", torch.int64).numpy()
        (logits,) = self.session.run(["logits"], feed)
        out = torch.from_numpy(logits).to(input_ids.device)
        loss = None if labels is None else _hf_loss(out, labels, self.config)
        return OnnxRuntimeOutput(loss=loss, logits=out)


def _graph_ops(path: str | Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def _hf_loss(logits: torch.Tensor, labels: torch.Tensor, config: PretrainedConfig | None) -> torch.Tensor:
    # The loss HF's heads compute in forward, so test_step logs the same quantity for int8 as for float.
    functional = nn.functional
    problem = getattr(config, "problem_type", None)
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in architectures):
        logits, labels = logits[:, :-1], labels[:, 1:]  # predict token t+1 from tokens <= t
    if problem is None:
        if logits.shape[-1] == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        return functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(logits.shape[:-1]))
    if problem == "multi_label_classification":
        return functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def onnx_int8_model(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP, weight_type: WeightType = "qint8"):
    """An :class:`OnnxRuntimeModel` over ``model`` quantized to int8, without writing an artifact directory.

    Raises:
        ValueError: no Linear layer to quantize.
        ImportError: onnxruntime / onnx missing.

    Example::
        int8 = onnx_int8_model(model)
    """
    quantizable_linear_names(model, skip)
    import_onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / INT8_ONNX_FILE
        _quantize_onnx(model, path, skip, weight_type)
        # The session holds the graph in memory once built, so the temporary file can go.
        return OnnxRuntimeModel(path, getattr(model, "config", None))


def load_int8_onnx(directory: str | Path, num_threads: int | None = None) -> OnnxRuntimeModel:
    """Load an artifact written by :func:`export_int8_onnx` (its config included) as an :class:`OnnxRuntimeModel`.

    Raises:
        FileNotFoundError: no ``model.int8.onnx`` in ``directory``.

    Example::
        model = load_int8_onnx("runs/rt/export-int8")
    """
    directory = Path(directory)
    path = directory / INT8_ONNX_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(directory)!r} holds no {INT8_ONNX_FILE}; give a directory written by export_int8_onnx or "
            "Int8Quantization(backend='onnxruntime')."
        )
    config = None
    if (directory / "config.json").is_file():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code())
    return OnnxRuntimeModel(path, config, num_threads)


def _require_pretrained(model: nn.Module, what: str) -> None:
    if not hasattr(model, "save_pretrained") or not isinstance(getattr(model, "config", None), PretrainedConfig):
        raise TypeError(
            f"{what} export needs a transformers PreTrainedModel (save_pretrained and a config), got "
            f"{type(model).__name__}; give the HF model (a LightningModule's `.model`)."
        )


def export_bf16(model: nn.Module, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Save a bfloat16 copy of the HF ``model`` (``model`` itself is unchanged) with its tokenizer.

    Raises:
        TypeError: not a transformers model.
        FileExistsError: ``out_dir`` holds files.

    Example::
        export_bf16(model, "export-bf16", tokenizer)
        AutoModelForSequenceClassification.from_pretrained("export-bf16", dtype=torch.bfloat16)
    """
    _require_pretrained(model, "bf16")
    check_export_dir(out_dir)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)  # a copy: the run's model stays in its training dtype
    return export_pretrained(cast(PreTrainedModel, bf16), tokenizer, out_dir)


def export_bitsandbytes(
    model: nn.Module,
    out_dir: str | Path,
    tokenizer: Any = None,
    bits: Literal[4, 8] = 8,
    skip: Iterable[str] = DEFAULT_SKIP,
    compute_dtype: torch.dtype = torch.float16,
    device: str | torch.device | None = None,
) -> Path:
    """Save the HF ``model`` with bitsandbytes int8 (LLM.int8) or 4-bit NF4 weights, for serving on CUDA.

    Uses transformers' own path: ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`` on a float
    copy, then ``save_pretrained``, so ``config.json`` carries the ``quantization_config`` and
    ``from_pretrained(out_dir, device_map="cuda")`` loads the quantized weights. Layers matching ``skip`` stay
    float. Quantizes on CUDA when there is one (else on CPU, which bitsandbytes >= 0.45 supports).

    Args:
        bits: 8 (``load_in_8bit``) or 4 (``load_in_4bit``, NF4).
        compute_dtype: the dtype 4-bit layers compute in (float16 runs on every CUDA GPU; bfloat16 on Ampere+).
        device: where to quantize; default ``cuda`` if available, else ``cpu``.

    Raises:
        ValueError: ``bits`` not 4 or 8; no Linear layer to quantize.
        TypeError: not a transformers model.
        ImportError: bitsandbytes or accelerate missing (install hint).
        FileExistsError: ``out_dir`` holds files.

    Example::
        export_bitsandbytes(model, "export-nf4", tokenizer, bits=4)
    """
    if bits not in (4, 8):
        raise ValueError(f"export_bitsandbytes(bits={bits!r}): choose 8 (LLM.int8) or 4 (NF4).")
    _require_pretrained(model, "bitsandbytes")
    names = set(quantizable_linear_names(model, skip))
    try:
        import accelerate  # noqa: F401
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"bitsandbytes export needs bitsandbytes and accelerate: pip install 'bitsandbytes>=0.45' "
            f"'accelerate>=1.1' ({err})"
        ) from err
    from transformers import BitsAndBytesConfig

    out = check_export_dir(out_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    floats = [n for n, m in model.named_modules() if type(m) is nn.Linear and n not in names]
    quantization = BitsAndBytesConfig(
        load_in_8bit=bits == 8,
        load_in_4bit=bits == 4,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=floats or None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = cast(PreTrainedModel, model)  # checked by _require_pretrained
        hf_model.save_pretrained(tmp, safe_serialization=True)
        quantized = type(hf_model).from_pretrained(
            tmp, quantization_config=quantization, device_map={"": str(device)}, trust_remote_code=trust_remote_code()
        )
        return export_pretrained(quantized, tokenizer, out)
