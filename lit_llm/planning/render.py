"""The plan as a rich table for the terminal: candidates, memory breakdown, time, the recommendation and why."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lit_llm.planning.plan import PlanReport
from lit_llm.planning.presets import GIB

__all__ = ["render_plan"]


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 72 * 3600 else f"{seconds / 86400:.1f} d"


def render_plan(report: PlanReport, console: Console | None = None, top: int = 12) -> None:
    """Print the ``top`` candidates (fitting ones first, fastest first) and the recommendation with its reasons.

    Example::
        render_plan(make_plan(request))
    """
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=180)  # piped output: keep one candidate per line
    req = report.request
    n_params = report.as_dict()["parameters"]
    table = Table(
        title=(
            f"{req.model.name} ({n_params / 1e6:,.1f}M params, {req.task}) seq {req.seq_len}, global batch "
            f"{req.global_batch} on {req.devices} x {req.nodes} x {req.hardware.name} ({req.hardware.memory_gib:g} GiB)"
        ),
        caption="GiB per device; peak < sum because gradients replace activations during backward",
    )
    for name, justify in (
        ("plan", "left"), ("weights", "right"), ("grads", "right"), ("optim", "right"), ("activ.", "right"),
        ("temp", "right"), ("peak", "right"), ("fits", "center"), ("step s", "right"), ("comm GB", "right"),
        ("tokens/s", "right"), ("total", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    shown = report.candidates[:top]
    for c in shown:
        m = c.memory
        fits = "[green]yes[/]" if c.fits and not c.tight else ("[yellow]tight[/]" if c.fits else "[red]no[/]")
        style = "bold" if c is report.best else None
        table.add_row(
            c.choice.label, *(f"{v / GIB:.2f}" for v in (m.weights, m.gradients, m.optimizer, m.activations,
                                                         m.temporary, m.peak)),
            fits, f"{c.time.step_s:.3g}", f"{c.time.comm_bytes / 1e9:.3g}", f"{c.tokens_per_s:,.0f}",
            _hours(c.total_s), style=style,
        )
    console.print(table)
    if len(report.candidates) > top:
        console.print(f"({len(report.candidates) - top} more candidates; --json lists them all)")
    if req.hardware.notes:
        console.print(f"[yellow]note:[/] {req.hardware.name}: {req.hardware.notes}")
    if report.alternatives:
        console.print("[bold]Parameter-efficient alternatives[/] (adapters trained, base frozen; plan one with "
                      "--adapter lora or --adapter qlora):")
        for c in report.alternatives:
            console.print(f"  - {c.choice.label}: peak {c.memory.peak / GIB:.2f} GiB, {c.trainable:,} trainable "
                          f"parameters, {c.time.step_s:.3g} s/step, {c.tokens_per_s:,.0f} tokens/s")
    console.print(f"[bold]Recommended:[/] {report.best.choice.label}")
    for reason in report.reasons:
        console.print(f"  - {reason}")
