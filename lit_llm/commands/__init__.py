"""The ``lit-llm`` subcommands besides LightningCLI's own: ``export`` (a checkpoint to a Hugging Face directory
and ONNX) and ``tune`` (an Optuna search whose trials are ordinary fit runs). Only the command line imports
these; the library never does."""
