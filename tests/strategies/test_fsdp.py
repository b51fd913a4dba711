import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lit_llm.commands.export import CheckpointError, load_checkpoint, main as export_main
from lit_llm.modules import SequenceClassifier
from lit_llm.strategies import TransformerFSDP, TransformerFSDP2, find_block_classes

HERE = Path(__file__).parent
MODULE = "lit_llm.modules.SequenceClassifier"  # checkpoints of a plain Trainer do not record their class


def _run_two_ranks(script: str, out: Path, *args: object) -> None:
    """Run a standalone 2-process script (Lightning's launcher re-executes it per rank) and fail with its stderr."""
    # Launcher variables in our environment would make the script think its ranks were started externally.
    launcher_keys = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GLOBAL_RANK")
    env = {k: v for k, v in os.environ.items() if k not in launcher_keys}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    command = [sys.executable, str(HERE / script), str(out), *map(str, args)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def fsdp2_runs(tmp_path_factory, tiny_tokenizer_dir, tiny_tokenizer) -> Path:
    """Both two-process FSDP2 runs in one launch (fsdp2_script.py): ``train/`` (3 sharded steps on a sentiment CSV,
    a sharded checkpoint, the gathered weights) and ``resume/`` (a straight 2-epoch run and a sharded-checkpoint
    resume); the tests below only read what they wrote."""
    import random

    out = tmp_path_factory.mktemp("fsdp2")
    (out / "train").mkdir()
    (out / "resume").mkdir()
    rng = random.Random(0)
    pos = ["good", "great", "brilliant", "fun", "loved", "best"]
    neg = ["bad", "awful", "boring", "dull", "hated", "worst"]
    filler = ["the", "movie", "film", "story", "was", "really", "very", "acting", "script"]
    sentiment = out / "sentiment.csv"  # 96 rows as conftest's sentiment_csvs (a function-scoped fixture)
    sentiment.write_text("text,label\n" + "".join(
        f"{' '.join(rng.sample(filler, 4) + [rng.choice(pos if label == 'fresh' else neg)])},{label}\n"
        for label in (rng.choice(["fresh", "rotten"]) for _ in range(96))))
    resume_train = out / "resume_train.csv"
    rows = "".join(f"good movie {i % 5},fresh\nbad film {i % 7},rotten\n" for i in range(12))
    resume_train.write_text("text,label\n" + rows)  # 24 rows: 3 steps per epoch on each of 2 ranks with batch 4
    _run_two_ranks("fsdp2_script.py", out, tiny_tokenizer_dir, sentiment, resume_train, len(tiny_tokenizer))
    return out


def test_block_classes_come_from_no_split_modules(tiny_bert_dir, tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    bert = SequenceClassifier(str(tiny_bert_dir), labels=["a", "b"])
    assert {c.__name__ for c in find_block_classes(bert)} == {"BertLayer", "BertEmbeddings"}
    assert {c.__name__ for c in find_block_classes(bert, repeated_only=True)} == {"BertLayer"}
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    assert {c.__name__ for c in find_block_classes(gpt2)} == {"GPT2Block"}
    assert {c.__name__ for c in find_block_classes(bert, ["BertSelfAttention"])} == {"BertSelfAttention"}


def test_no_block_classes_is_an_error():
    with pytest.raises(ValueError, match=r"no HF model declaring _no_split_modules.*pass layer_classes"):
        find_block_classes(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"layer classes \['Nope'\] match no submodule"):
        find_block_classes(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["Nope"])


def test_fsdp1_on_cpu_suggests_fsdp2(tmp_path, tiny_bert_dir):
    model = SequenceClassifier(str(tiny_bert_dir), labels=["a", "b"])
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        strategy=TransformerFSDP(),
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(
        ValueError, match=r"TransformerFSDP runs on CUDA GPUs.*use\s+lit_llm.strategies.TransformerFSDP2"
    ):
        trainer.fit(model, train_dataloaders=[])


@pytest.mark.slow
def test_fsdp2_trains_sharded_on_two_cpu_processes_and_exports(tmp_path, fsdp2_runs):
    runs = fsdp2_runs / "train"
    ranks = [json.loads((runs / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world_size"] == 2 and r["is_dtensor"] and r["global_step"] == 3
        assert r["local_rows"] == 16  # the 32x32 query weight split in two shards of 16 rows
    ckpt = runs / "sharded.ckpt"
    assert (ckpt / ".metadata").is_file() and len(list(ckpt.glob("*.distcp"))) == 2  # one shard per rank

    # `lit-llm export` of the directory (the command's own entry point) consolidates the shards.
    assert export_main([str(ckpt), str(tmp_path / "export"), "--module", MODULE]) == 0
    from transformers import AutoModelForSequenceClassification

    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    assert exported.config.id2label == {0: "fresh", 1: "rotten"}
    full = torch.load(runs / "full_state.pt", weights_only=True)
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, full[name]), name


def test_export_plain_checkpoint_and_errors(tmp_path, tiny_bert_dir, sentiment_csvs, capsys):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_llm.datamodules import TextClassificationDataModule

    model = SequenceClassifier(str(tiny_bert_dir), export=False)
    data = TextClassificationDataModule(
        str(tiny_bert_dir),
        train_file=str(sentiment_csvs["train"]),
        validation_file=str(sentiment_csvs["val"]),
        batch_size=16,
    )
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        callbacks=[ckpt_cb],
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    ).fit(model, datamodule=data)
    assert export_main([ckpt_cb.last_model_path, str(tmp_path / "hf"), "--onnx", "--module", MODULE]) == 0
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    import onnxruntime

    enc = AutoTokenizer.from_pretrained(tmp_path / "hf")(
        ["good movie", "the film was really bad"], padding=True, return_tensors="pt"
    )
    reference = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()(**enc).logits
    session = onnxruntime.InferenceSession(str(tmp_path / "hf" / "model.onnx"))
    (onnx_logits,) = session.run(None, {i.name: enc[i.name].numpy() for i in session.get_inputs()})
    assert torch.allclose(torch.from_numpy(onnx_logits), reference.detach(), atol=1e-4)

    clf = pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu")
    assert clf("good movie")[0]["label"] in ("fresh", "rotten")
    # Never over an earlier export.
    assert export_main([ckpt_cb.last_model_path, str(tmp_path / "hf"), "--module", MODULE]) == 2
    assert "already holds files" in capsys.readouterr().err

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(Path(ckpt_cb.last_model_path).read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt is not a readable checkpoint.*truncated"):
        load_checkpoint(truncated)
    not_ckpt = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, not_ckpt)
    with pytest.raises(CheckpointError, match=r"weights\.pt is not a Lightning checkpoint: no 'state_dict'"):
        load_checkpoint(not_ckpt)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    assert TransformerFSDP2().layer_classes is None  # constructible without a process group


@pytest.mark.slow
def test_fsdp2_sharded_checkpoint_resumes_exactly(fsdp2_runs):
    runs = fsdp2_runs / "resume"
    result = torch.load(runs / "resume.pt", weights_only=True)
    assert result["steps"] == 6
    assert (runs / "epoch1.ckpt" / ".metadata").is_file()  # sharded, one file per rank
    for name, tensor in result["a"].items():
        assert torch.equal(tensor, result["b"][name]), name  # bitwise: the resumed run is the straight run
