"""Snapshots of the file journal: one sidecar file per projection name, replaced atomically
(temp file, fsync, rename, fsync of the folder), checked by a CRC before it is trusted."""

from __future__ import annotations

import logging
import os
import zlib
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import msgspec

from ..envelope import ENCODER, PAYLOAD_DECODER, Snapshot

log = logging.getLogger("eventstore.snapshots")


class _StoredSnapshot(msgspec.Struct, kw_only=True):
    name: str
    position: int
    created_at: datetime
    crc32: int
    state: msgspec.Raw


_STORED_DECODER = msgspec.json.Decoder(_StoredSnapshot)


def snapshot_path(folder: Path, name: str) -> Path:
    return folder / f"{quote(name, safe='')}.json"


def write_snapshot_file(folder: Path, name: str, position: int, state_json: bytes) -> bool:
    """Replace the snapshot when ``position`` is higher than the stored one; return whether it did."""
    current = read_snapshot_file(folder, name)
    if current is not None and current.position >= position:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    record = _StoredSnapshot(
        name=name, position=position, created_at=datetime.now(UTC),
        crc32=zlib.crc32(state_json), state=msgspec.Raw(state_json),
    )
    target = snapshot_path(folder, name)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(temp, "wb") as out:
        out.write(ENCODER.encode(record))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, target)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def read_snapshot_file(folder: Path, name: str) -> Snapshot | None:
    """The stored snapshot, or ``None`` when there is none or it cannot be trusted (logged)."""
    path = snapshot_path(folder, name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("snapshot %s is unreadable (%s); replaying from the events instead", path, exc)
        return None
    try:
        stored = _STORED_DECODER.decode(data)
        if stored.name != name or zlib.crc32(stored.state) != stored.crc32:
            raise ValueError("checksum or name mismatch")
        state = PAYLOAD_DECODER.decode(stored.state)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        log.warning("snapshot %s is corrupt (%s); replaying from the events instead", path, exc)
        return None
    return Snapshot(name=name, position=stored.position, state=state, created_at=stored.created_at)
