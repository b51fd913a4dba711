"""Learning-rate schedules as pure functions of the optimizer step (nanoGPT's ``get_lr``, generalised)."""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["DecayName", "DECAYS", "lr_multiplier", "resolve_warmup_steps"]

DecayName = Literal["linear", "cosine", "constant", "inverse_sqrt"]
DECAYS: tuple[str, ...] = ("linear", "cosine", "constant", "inverse_sqrt")


def lr_multiplier(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    decay: DecayName = "linear",
    min_lr_ratio: float = 0.0,
) -> float:
    """Factor applied to a param group's base learning rate at optimizer step ``step`` (0-based).

    Linear warmup from ``1 / (warmup_steps + 1)`` to 1 over ``warmup_steps`` steps (so step 0 already trains),
    then the decay down to ``min_lr_ratio`` at ``total_steps``; past ``total_steps`` it stays there.

    Args:
        step: optimizer steps already taken (``trainer.global_step``).
        warmup_steps: length of the warmup, >= 0.
        total_steps: length of the whole run in optimizer steps, > 0.
        decay: ``linear``, ``cosine``, ``constant`` or ``inverse_sqrt`` (1 / sqrt(step / warmup)).
        min_lr_ratio: floor of the decay as a fraction of the base rate, in [0, 1].

    Example::
        >>> lr_multiplier(0, warmup_steps=4, total_steps=10)
        0.2
        >>> lr_multiplier(10, warmup_steps=4, total_steps=10, min_lr_ratio=0.1)
        0.1
    """
    if decay not in DECAYS:
        raise ValueError(f"decay={decay!r}: choose one of {', '.join(DECAYS)}.")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if decay == "constant":
        return 1.0
    if decay == "inverse_sqrt":
        return max(min_lr_ratio, math.sqrt(max(warmup_steps, 1) / max(step, 1)))
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if decay == "linear":
        shape = 1.0 - progress
    elif decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"decay={decay!r}: choose one of {', '.join(DECAYS)}.")
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def resolve_warmup_steps(warmup: int | float, total_steps: int) -> int:
    """Turn ``warmup`` (a step count, or a fraction of the run when a float below 1) into steps.

    Raises:
        ValueError: a negative warmup, or one not shorter than the run.
    """
    if warmup < 0:
        raise ValueError(f"warmup={warmup!r}: must be >= 0 (a number of optimizer steps, or a fraction in [0, 1)).")
    if isinstance(warmup, float) and warmup >= 1.0 and not warmup.is_integer():
        raise ValueError(
            f"warmup={warmup!r}: a float is a fraction of the run and must be below 1 (e.g. 0.06); "
            "a number of optimizer steps must be a whole number."
        )
    steps = int(round(warmup * total_steps)) if isinstance(warmup, float) and warmup < 1.0 else int(warmup)
    if total_steps > 0 and steps >= total_steps:
        raise ValueError(
            f"warmup={warmup!r} is {steps} optimizer steps, not shorter than the whole run ({total_steps} steps): "
            "use a smaller warmup or a fraction such as 0.06."
        )
    return steps
