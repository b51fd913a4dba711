"""Training techniques as plain functions that callbacks and modules share: ``schedules`` (warmup and decay),
``optim`` (parameter groups, layer-wise decay, 8-bit optimizers), ``token_loss`` (exact token-weighted loss),
``dropout`` (fast CPU dropout masks), ``flops``, ``checkpointing`` (the one safe checkpoint loader, atomic saves)
and ``lora``."""
