"""What a run reports and logs: classification / regression reports and figures sent to every logger
(``reports``), and a reader of offline W&B runs (``wandb_offline``)."""

from lit_llm.tracking.reports import log_figure
from lit_llm.tracking.wandb_offline import read_offline_run

__all__ = ["log_figure", "read_offline_run"]
