"""lit_llm.compat: the process group is destroyed at exit (the cause of the ddp_spawn worker aborts)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_importing_lit_llm_destroys_a_gloo_process_group_at_exit(tmp_path):
    # atexit runs handlers last-registered-first: the checker, registered before `import lit_llm`, runs after ours.
    script = textwrap.dedent(
        """
        import atexit, os, socket
        import torch.distributed as dist

        atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
        import lit_llm  # noqa: F401

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        assert dist.is_initialized()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "initialized at exit: False" in out.stdout, out.stdout + out.stderr


def test_registering_twice_registers_once():
    import lit_llm.compat as compat

    compat.destroy_process_group_at_exit()
    compat.destroy_process_group_at_exit()
    assert compat._registered is True


def test_the_private_names_our_strategies_override_still_exist():
    """lit_llm.strategies.fsdp overrides or sets these; compat.py's docstring lists them."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    assert callable(FSDPStrategy._setup_model)
    assert "_activation_checkpointing_kwargs" in vars(FSDPStrategy(activation_checkpointing_policy=None))
    assert hasattr(ModelParallelStrategy(), "_data_parallel_size")


def test_the_private_transformers_names_fast_dropout_reads_still_mean_what_they_did(tiny_bert_dir):
    """lit_llm.training.dropout switches a model's attention only where these say it is sdpa through the interface."""
    from torch import nn
    from transformers import AutoModel

    from lit_llm.compat import hf_attention_implementation, hf_uses_attention_interface

    model = AutoModel.from_pretrained(tiny_bert_dir)
    assert hf_attention_implementation(model) == "sdpa" and hf_uses_attention_interface(model)
    assert hf_attention_implementation(nn.Linear(2, 2)) is None and not hf_uses_attention_interface(nn.Linear(2, 2))
