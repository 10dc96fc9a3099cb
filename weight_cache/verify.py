"""Re-reading a pushed model and checking it against its manifest (``ember cache verify``)."""

from __future__ import annotations

import hashlib

from weight_cache.fetch import read_manifest
from weight_cache.manifest import Manifest, chunk_digest
from weight_cache.objects import ObjectStore

__all__ = ["verify_model"]


async def verify_model(store: ObjectStore) -> tuple[Manifest, list[str]]:
    """The model's manifest and what of its files disagrees with it (empty: all match).

    Each file's size and ETag are asked for; then every byte is read, a chunk at a time (8 MiB
    without a chunk table), each chunk checked against its digest and the whole against its
    sha256. One line per problem, naming the file.
    """
    problems: list[str] = []
    manifest = await read_manifest(store)
    for f in manifest.files:
        info = await store.head(f.path)
        if info.size != f.size or info.etag != f.etag:
            problems.append(
                f"{f.path}: size/ETag {info.size}/{info.etag}, manifest {f.size}/{f.etag}"
            )
            continue
        digest = hashlib.sha256()
        step = f.chunks.size if f.chunks is not None else 8 * 1024 * 1024
        for offset in range(0, f.size, step):
            data = await store.read_range(
                f.path, start=offset, length=min(step, f.size - offset), etag=f.etag
            )
            digest.update(data)
            if f.chunks is not None and chunk_digest(data) != f.chunks.digest(offset):
                problems.append(f"{f.path}: chunk {offset // step} differs from its digest")
        if digest.hexdigest() != f.sha256:
            problems.append(f"{f.path}: sha256 {digest.hexdigest()}, manifest {f.sha256}")
    return manifest, problems
