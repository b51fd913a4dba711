"""The ``lit-llm`` subcommands besides LightningCLI's own: ``export`` (a checkpoint to a Hugging Face directory
and ONNX) and ``tune`` (an Optuna search whose trials are ordinary fit runs). Only the command line imports
these; the library never does.

The steps of ``lit-llm fit / validate / test / predict`` (:class:`lit_llm.cli.LitLLMCLI`) live here too, one
concern a module: ``run_dirs``, ``loggers``, ``predictions``, ``trainer_defaults``, ``summary``, ``user_errors``."""
