"""Read an offline wandb run file (``run-<id>.wandb``) into wandb's own protobuf ``Record`` messages.

The file is the LevelDB log format wandb writes (and ``wandb sync`` uploads): a 7-byte header
(``:W&B``, magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (CRC32 of type+data,
length, type: 1 full, 2 first, 3 middle, 4 last). wandb no longer ships a Python reader for it.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B", f"{path} is not a wandb run file"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # too little room left for a chunk header: the block is padded
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + HEADER:pos + HEADER + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"corrupt chunk at byte {pos}"
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def history(records) -> list[dict[str, str]]:
    """Logged rows: key -> JSON text of the value."""
    return [{item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
