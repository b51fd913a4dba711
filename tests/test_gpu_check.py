import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "gc")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "gc.json").read_text())
    assert result["dry_run"] is True
    assert [r["seq_len"] for r in result["mlm_bf16"]] == [128, 512]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in result["mlm_bf16"])  # no GPU peak on CPU
    assert "needs CUDA" in result["fsdp_smoke"]["skipped"]
    assert result["int8_bitsandbytes"]["linears_replaced"] > 0
    assert result["int8_bitsandbytes"]["max_abs_logit_diff_vs_reference"] < 0.05
    assert result["optimizer_memory"]["AdamW"]["bytes_per_param"] == pytest.approx(8.0, abs=0.01)
    assert result["optimizer_memory"]["reduction"] > 0.6
    assert (tmp_path / "gc.md").read_text().startswith("# GPU check")
