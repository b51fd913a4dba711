"""lit-llm: PyTorch Lightning plugins for training and compressing transformer language models."""

from lit_llm.compat import destroy_process_group_at_exit

__version__ = "0.1.0"

# Every process that uses lit-llm (a ddp / ddp_spawn worker included) destroys its process group at exit, so a
# gloo group's threads never outlive the interpreter (see lit_llm.compat.destroy_process_group_at_exit).
destroy_process_group_at_exit()
