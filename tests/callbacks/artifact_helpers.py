"""Load a compressed-model artifact in a fresh Python process, as a user deploying it would, and return its logits.

Two loaders: lit-llm's public one (``python -c`` importing ``lit_llm.compression.compressed_models``), and onnxruntime
in a process where importing ``lit_llm`` or ``torch`` is made impossible, so ``model.onnx`` provably needs nothing
of ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]

_OUR_LOADER = """
import json, sys, torch
from lit_llm.compression.compressed_models import {loader}
model = {loader}(sys.argv[1])
inputs = json.loads(open(sys.argv[2]).read())
with torch.no_grad():
    logits = model(**{{k: torch.tensor(v) for k, v in inputs.items()}}).logits
shapes = {{name: list(p.shape) for name, p in model.named_parameters()}}
json.dump({{"logits": logits.tolist(), "parameters": sum(p.numel() for p in model.parameters()), "shapes": shapes,
           "zeros": sum(int((p == 0).sum()) for p in model.parameters())}}, open(sys.argv[3], "w"))
"""

_ONNX_ONLY = """
import json, sys
sys.modules["lit_llm"] = None  # importing lit_llm would now fail: the ONNX file must serve alone
sys.modules["torch"] = None
import numpy as np, onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1] + "/model.onnx", providers=["CPUExecutionProvider"])
inputs = {k: np.asarray(v, dtype=np.int64) for k, v in json.loads(open(sys.argv[2]).read()).items()}
inputs.setdefault("token_type_ids", np.zeros_like(inputs["input_ids"]))
feed = {i.name: inputs[i.name] for i in session.get_inputs()}
logits = session.run(["logits"], feed)[0]
json.dump({"logits": logits.tolist()}, open(sys.argv[3], "w"))
"""


def example_inputs(batch: int = 3, length: int = 9, vocab: int = 64) -> dict[str, torch.Tensor]:
    """Fixed token ids with some padding, so the attention mask matters."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(6, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def in_memory_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits
    model.train(was_training)
    return logits.numpy()


def _run(code: str, artifact: Path, inputs: dict[str, torch.Tensor], tmp_path: Path) -> dict:
    inputs_file, out_file = tmp_path / "inputs.json", tmp_path / "outputs.json"
    inputs_file.write_text(json.dumps({k: v.tolist() for k, v in inputs.items()}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(artifact), str(inputs_file), str(out_file)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out_file.read_text())


def load_in_fresh_process(loader: str, artifact: Path, inputs: dict[str, torch.Tensor], tmp_path: Path) -> dict:
    """Logits, parameter count, shapes and zeros of ``artifact`` loaded by
    ``lit_llm.compression.compressed_models.<loader>``."""
    out = _run(_OUR_LOADER.format(loader=loader), artifact, inputs, tmp_path)
    out["logits"] = np.asarray(out["logits"], dtype=np.float32)
    return out


def onnx_logits_in_fresh_process(artifact: Path, inputs: dict[str, torch.Tensor], tmp_path: Path) -> np.ndarray:
    """Logits of ``<artifact>/model.onnx`` run by onnxruntime in a process that cannot import lit_llm or torch."""
    return np.asarray(_run(_ONNX_ONLY, artifact, inputs, tmp_path)["logits"], dtype=np.float32)
