"""The manifest ``ember cache push`` writes beside a model's files.

It lets a cold start plan every read without listing the prefix or a HEAD per file: each file's
size, ETag and sha256, and for safetensors files the tensor index (name, dtype, shape, offsets).
It is written last, so a prefix with a manifest holds a complete upload.

Format 2 adds a chunk table per file: the file cut into fixed-size chunks, each with its BLAKE3
digest, so every reader thread verifies the chunk it read before its bytes are used, and a file
streams as fast as the readers, not as fast as one core hashes it in order. The whole-file sha256
stays (it is what Hugging Face's LFS oids are) and is checked off the critical path. Format 1
manifests (no chunk tables) still load, checked by the whole-file digest alone.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from blake3 import blake3
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from weight_cache.errors import CorruptCheckpoint
from weight_cache.safetensors_format import SafetensorsIndex, TensorInfo

MANIFEST_NAME = "ember-manifest.json"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024


class TensorEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: str
    shape: list[int]
    offsets: tuple[int, int]  # absolute, in the file


class SafetensorsEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    header_bytes: int
    data_bytes: int
    metadata: dict[str, str] = Field(default_factory=dict)
    tensors: dict[str, TensorEntry]

    @classmethod
    def from_index(cls, index: SafetensorsIndex) -> SafetensorsEntry:
        return cls.model_validate(index.as_dict())

    def tensor_infos(self) -> list[TensorInfo]:
        return sorted(
            (
                TensorInfo(name, t.dtype, tuple(t.shape), t.offsets[0], t.offsets[1])
                for name, t in self.tensors.items()
            ),
            key=lambda t: t.start,
        )


class ChunkTable(BaseModel):
    """``digests[i]`` is the digest of bytes ``[i * size, min((i + 1) * size, file size))``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: Literal["blake3"] = "blake3"
    size: int = Field(gt=0)
    digests: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]

    def tiles(self, file_size: int) -> bool:
        return len(self.digests) == -(-file_size // self.size)

    def digest(self, offset: int) -> str:
        return self.digests[offset // self.size]


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    size: int = Field(ge=0)
    etag: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    chunks: ChunkTable | None = None
    safetensors: SafetensorsEntry | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = FORMAT_VERSION
    source: str = ""  # where the files were pushed from (a folder, or hf://org/repo@revision)
    files: list[FileEntry]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    def identity(self) -> str:
        """What makes two copies the same: paths, sizes and checksums (not ETags or source)."""
        return ";".join(
            f"{f.path}:{f.size}:{f.sha256}" for f in sorted(self.files, key=lambda f: f.path)
        )

    def dumps(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_INDENT_2)

    @classmethod
    def loads(cls, raw: bytes, *, where: str) -> Manifest:
        try:
            data: Any = orjson.loads(raw)
            manifest = cls.model_validate(data)
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise CorruptCheckpoint(f"{where}: not a valid Ember manifest: {exc}") from None
        if manifest.format not in READABLE_FORMATS:
            raise CorruptCheckpoint(f"{where}: manifest format {manifest.format} is not supported")
        for f in manifest.files:
            if f.path.startswith("/") or ".." in f.path.split("/") or f.path == MANIFEST_NAME:
                raise CorruptCheckpoint(f"{where}: manifest names an unsafe path {f.path!r}")
            if f.chunks is not None and not f.chunks.tiles(f.size):
                raise CorruptCheckpoint(
                    f"{where}: the chunk table of {f.path} does not tile the file "
                    f"({len(f.chunks.digests)} chunks of {f.chunks.size} bytes for {f.size} bytes)"
                )
        return manifest


def chunk_digest(data: bytes | bytearray | memoryview) -> str:
    """The digest of one chunk, as the chunk tables record it. Releases the GIL."""
    return blake3(data, max_threads=1).hexdigest()
