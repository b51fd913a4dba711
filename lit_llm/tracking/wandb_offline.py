"""Read back an offline W&B run (``run-<id>.wandb``): its config, metric history and summary.

wandb 0.31 writes offline runs only as a LevelDB-log framed stream of protobuf ``Record`` messages (no
``wandb-summary.json``), and no longer ships a public reader for it; this one lets tests and scripts check what
a run logged without a W&B server.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OfflineRun", "read_offline_run", "find_run_file"]

_BLOCK = 32768
_HEADER = struct.Struct("<IHB")  # checksum, length, type
_FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run recorded.

    Attributes:
        config: the run config (key -> value).
        history: one dict per ``log`` call, in order (with ``_step``).
        summary: last value of each metric, as W&B's summary.
    """

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def series(self, key: str) -> list[Any]:
        """All logged values of one metric, in order."""
        return [row[key] for row in self.history if key in row]


def _frames(data: bytes) -> list[bytes]:
    ident, magic, _version = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError("not a W&B run file (bad header); expected a run-<id>.wandb file")
    pos, records, pending = _FILE_HEADER.size, [], b""
    while pos + _HEADER.size <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER.size:  # trailer padding at the end of a block
            pos += left_in_block
            continue
        _checksum, length, kind = _HEADER.unpack_from(data, pos)
        pos += _HEADER.size
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            records.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            records.append(pending + chunk)
            pending = b""
        elif kind == 0 and length == 0:  # zero padding
            pos += left_in_block - _HEADER.size - length
        else:
            raise ValueError(f"corrupt W&B run file at byte {pos}: record type {kind}")
    return records


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def find_run_file(directory: str | Path) -> Path:
    """The newest ``run-*.wandb`` below ``directory``.

    Raises:
        FileNotFoundError: none exists.
    """
    files = sorted(Path(directory).rglob("run-*.wandb"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file below {directory}; was the run logged with W&B offline?")
    return files[-1]


def read_offline_run(path: str | Path) -> OfflineRun:
    """Parse a ``run-<id>.wandb`` file (or the newest one below a directory).

    Example::
        run = read_offline_run("runs/minilm_rotten_tomatoes/version_0/wandb")
        run.summary["val/accuracy"]
    """
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        path = find_run_file(path)
    run = OfflineRun(path=path)
    for raw in _frames(path.read_bytes()):
        # protobuf builds the message classes when the module is imported; wandb ships no stubs declaring them.
        record = pb.Record()  # type: ignore[attr-defined]
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for i in record.summary.update:
                run.summary[_key(i)] = json.loads(i.value_json)
        elif kind == "config":
            for i in record.config.update:
                run.config[_key(i)] = json.loads(i.value_json)
        elif kind == "run":
            for i in record.run.config.update:
                run.config[_key(i)] = json.loads(i.value_json)
    for row in run.history:  # W&B's summary defaults to the last logged value
        for k, v in row.items():
            if not k.startswith("_"):
                run.summary.setdefault(k, v)
    return run
