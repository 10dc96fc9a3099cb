"""``ember cache push``: put a model folder (or a Hugging Face repo) into the regional cache.

Files the local tier writes into an entry itself (its marker, its manifest copy, ``*.partial``)
are left out, so a folder that is a pulled tier entry pushes as the model it holds. Every file
is checked before anything is uploaded (safetensors headers parsed and bounded, a
sharded ``model.safetensors.index.json`` checked against its shards), so a corrupt checkpoint
uploads nothing. Files go up concurrently (multipart when large); the manifest goes last.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from weight_cache import hub
from weight_cache.checkpoints import PICKLES, pickle_advice
from weight_cache.errors import BadSource, CorruptCheckpoint
from weight_cache.manifest import (
    DEFAULT_CHUNK_BYTES,
    MANIFEST_NAME,
    ChunkTable,
    FileEntry,
    Manifest,
    SafetensorsEntry,
    chunk_digest,
    path_problem,
    reserved_name,
)
from weight_cache.objects import ObjectStore
from weight_cache.safetensors_format import SafetensorsIndex, read_index

SHARD_INDEX = "model.safetensors.index.json"
_SKIP_DIRS = {".git", ".cache", "__pycache__"}


@dataclass(frozen=True)
class LocalFile:
    """A file of a folder being pushed: its key, path and what it was hashed to."""

    path: Path
    rel: str
    size: int
    sha256: str
    chunks: ChunkTable
    index: SafetensorsIndex | None


def hash_file(path: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[str, ChunkTable]:
    """The file's sha256 and its chunk table, in one read."""
    digest = hashlib.sha256()
    chunks = []
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
            chunks.append(chunk_digest(chunk))
    return digest.hexdigest(), ChunkTable(size=chunk_bytes, digests=chunks)


def scan_directory(
    directory: Path,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    only: Sequence[str] | None = None,
) -> list[LocalFile]:
    """Every file to push (``only``: those whose path matches one of these patterns), hashed
    and checked. Blocking: call it from a thread."""
    if not directory.is_dir():
        raise BadSource(f"{directory} is not a directory")
    files: list[LocalFile] = []
    for path, rel in _pushable(directory):
        if only is not None and not any(fnmatch.fnmatch(rel, p) for p in only):
            continue
        problem = path_problem(rel)
        if problem is not None:
            raise BadSource(f"{path} cannot be pushed: its path {problem}")
        index = read_index(str(path)) if path.suffix == ".safetensors" else None
        sha256, chunks = hash_file(path, chunk_bytes)
        files.append(LocalFile(path, rel, path.stat().st_size, sha256, chunks, index))
    if not files:
        raise BadSource(f"{directory} holds no files to push")
    if not any(f.rel.endswith(".safetensors") for f in files):
        pickles = [f.rel for f in files if f.rel.endswith(PICKLES)]
        if pickles:  # what a replica would refuse to load, refused before it is uploaded
            raise BadSource(f"{directory} has no safetensors file; {pickle_advice(pickles)}")
    _check_shard_index(directory, files)
    return files


def _pushable(directory: Path) -> Iterator[tuple[Path, str]]:
    """The folder's files to push and their ``/``-separated paths, in order."""
    for path in sorted(directory.rglob("*")):
        parts = path.relative_to(directory).parts
        if _SKIP_DIRS.intersection(parts) or any(reserved_name(p) for p in parts):
            continue  # the tier's own files (a pulled entry pushed again), VCS and caches
        if path.is_file():
            yield path, "/".join(parts)


def _check_shard_index(directory: Path, files: list[LocalFile]) -> None:
    by_rel = {f.rel: f for f in files}
    if SHARD_INDEX not in by_rel:
        return
    where = str(directory / SHARD_INDEX)
    try:
        weight_map = json.loads((directory / SHARD_INDEX).read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"{where}: not a valid shard index ({exc})") from None
    if not isinstance(weight_map, dict):
        raise CorruptCheckpoint(f"{where}: weight_map is not an object")
    for tensor, shard in weight_map.items():
        shard_file = by_rel.get(str(shard))
        if shard_file is None or shard_file.index is None:
            raise CorruptCheckpoint(f"{where}: tensor {tensor!r} points at missing shard {shard!r}")
        if tensor not in {t.name for t in shard_file.index.tensors}:
            raise CorruptCheckpoint(f"{where}: shard {shard!r} has no tensor {tensor!r}")


async def push_directory(
    store: ObjectStore,
    directory: Path,
    *,
    source_label: str = "",
    only: Sequence[str] | None = None,
    concurrency: int = 4,
    progress: Callable[[int], None] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Manifest:
    """Upload the folder's files, then the manifest (chunk tables of ``chunk_bytes`` chunks)."""
    files = await asyncio.to_thread(scan_directory, directory, chunk_bytes, only)
    limit = asyncio.Semaphore(concurrency)

    async def upload(f: LocalFile) -> FileEntry:
        async with limit:
            info = await store.put_file(f.rel, f.path, progress=progress)
        return FileEntry(
            path=f.rel,
            size=f.size,
            etag=info.etag,
            sha256=f.sha256,
            chunks=f.chunks,
            safetensors=SafetensorsEntry.from_index(f.index) if f.index else None,
        )

    entries = await asyncio.gather(*(upload(f) for f in files))
    label = source_label or str(await asyncio.to_thread(directory.resolve))
    manifest = Manifest(source=label, files=list(entries))
    await store.put_bytes(MANIFEST_NAME, manifest.dumps())
    return manifest


def total_bytes(directory: Path) -> int:
    """The bytes a push of ``directory`` uploads (for its progress)."""
    return sum(path.stat().st_size for path, _ in _pushable(directory))


async def push_source(
    store: ObjectStore,
    source: str,
    *,
    concurrency: int = 4,
    progress: Callable[[int], None] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Manifest:
    """Push a local folder, or ``hf://org/repo[@revision]`` as the Hugging Face cache holds it
    (downloaded there first unless it is, or only read from it with ``HF_HUB_OFFLINE=1``)."""
    if not source.startswith(hub.SCHEME):
        return await push_directory(
            store,
            Path(source),
            concurrency=concurrency,
            progress=progress,
            chunk_bytes=chunk_bytes,
        )
    directory = await asyncio.to_thread(hub.resolve, source)  # the Hugging Face cache's copy
    return await push_directory(
        store,
        directory,
        source_label=source,
        only=hub.PATTERNS,  # what a model needs of what the cache holds of the repository
        concurrency=concurrency,
        progress=progress,
        chunk_bytes=chunk_bytes,
    )
