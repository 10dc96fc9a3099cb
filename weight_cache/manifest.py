"""The manifest ``ember cache push`` writes beside a model's files.

It lets a cold start plan every read without listing the prefix or a HEAD per file: each file's
size, ETag and sha256, and for safetensors files the tensor index (name, dtype, shape, offsets).
It is written last, so a prefix with a manifest holds a complete upload.

A manifest is read as untrusted input: every path must be a plain relative path that names a
file (no ``..``, no empty or ``.`` parts, no NUL or backslash, no two files where one is the
other's directory, no duplicates), and none may be a name the local tier writes into an entry
itself (its marker, its copy of the manifest, ``*.partial`` files), so a manifest can never make
an entry look complete before its files are verified.

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
COMPLETE_MARKER = ".ember-complete"  # the tier's marker: the entry is whole and verified
PARTIAL_SUFFIX = ".partial"  # a file (or the marker) being written
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024


class TensorEntry(BaseModel):
    """One tensor of a safetensors file: its dtype, shape and data offsets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: str
    shape: list[int]
    offsets: tuple[int, int]  # absolute, in the file


class SafetensorsEntry(BaseModel):
    """A safetensors file's index as the manifest records it (header size, tensors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header_bytes: int
    data_bytes: int
    metadata: dict[str, str] = Field(default_factory=dict)
    tensors: dict[str, TensorEntry]

    @classmethod
    def from_index(cls, index: SafetensorsIndex) -> SafetensorsEntry:
        """The entry for an index parsed from a file's header."""
        return cls.model_validate(index.as_dict())

    def check_header(self, index: SafetensorsIndex, *, where: str) -> None:
        """Refuse a file whose own header (``index``) says anything other than this entry.

        The streamed tensors are made from the manifest's index, later loads from the file's
        header: they must agree on every tensor's dtype, shape and offsets (and on where the
        data starts), or the first start would serve other numbers than the next.
        """
        file = SafetensorsEntry.from_index(index)
        if file == self:
            return
        if (file.header_bytes, file.data_bytes) != (self.header_bytes, self.data_bytes):
            raise CorruptCheckpoint(
                f"{where}: the header takes {file.header_bytes} bytes and the data "
                f"{file.data_bytes}; the manifest says {self.header_bytes} and {self.data_bytes}"
            )
        for name in sorted(set(file.tensors) | set(self.tensors)):
            mine, theirs = self.tensors.get(name), file.tensors.get(name)
            if mine is None or theirs is None:
                side = "the manifest" if mine is None else "the file's header"
                raise CorruptCheckpoint(f"{where}: tensor {name!r} is missing from {side}")
            for what in ("dtype", "shape", "offsets"):
                have, said = getattr(theirs, what), getattr(mine, what)
                if have != said:
                    raise CorruptCheckpoint(
                        f"{where}: tensor {name!r} has {what} {_show(have)} in the file's "
                        f"header, {_show(said)} in the manifest"
                    )
        raise CorruptCheckpoint(f"{where}: the header's metadata differs from the manifest's")

    def tensor_infos(self) -> list[TensorInfo]:
        """The tensors, with their offsets from the start of the file."""
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
        """Whether the chunks cover a file of ``size`` bytes exactly."""
        return len(self.digests) == -(-file_size // self.size)

    def digest(self, offset: int) -> str:
        """The digest of the chunk starting at ``offset``."""
        return self.digests[offset // self.size]


class FileEntry(BaseModel):
    """One file of a model: its path, size, ETag, sha256, chunk digests and tensor index."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    size: int = Field(ge=0)
    etag: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    chunks: ChunkTable | None = None
    safetensors: SafetensorsEntry | None = None


class Manifest(BaseModel):
    """What ``ember cache push`` writes beside a model: every file, checked, indexed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = FORMAT_VERSION
    source: str = ""  # where the files were pushed from (a folder, or hf://org/repo@revision)
    files: list[FileEntry]

    @property
    def total_bytes(self) -> int:
        """The size of all the files together."""
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry:
        """The entry of the file at ``path`` (KeyError if none)."""
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
        """The manifest as the JSON written to the store and the tier."""
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_INDENT_2)

    @classmethod
    def loads(cls, raw: bytes, *, where: str) -> Manifest:
        """Parse and check a manifest; anything wrong is one line of :class:`CorruptCheckpoint`."""
        try:
            data: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CorruptCheckpoint(f"{where}: not a valid Ember manifest: {exc}") from None
        try:
            manifest = cls.model_validate(data)
        except ValidationError as exc:
            raise CorruptCheckpoint(
                f"{where}: not a valid Ember manifest: {_first_error(exc)}"
            ) from None
        manifest.check(where=where)
        return manifest

    def check(self, *, where: str) -> None:
        """What a manifest's schema cannot say: its paths name files the tier may write (see
        :func:`path_problem`), once each, none also another's directory; chunk tables and
        safetensors indexes fit their files. Anything wrong is one line of CorruptCheckpoint."""
        if self.format not in READABLE_FORMATS:
            raise CorruptCheckpoint(f"{where}: manifest format {self.format} is not supported")
        files: set[str] = set()
        for f in self.files:
            problem = path_problem(f.path)
            if problem is not None:
                raise CorruptCheckpoint(f"{where}: manifest path {f.path!r} {problem}")
            if f.path in files:
                raise CorruptCheckpoint(f"{where}: manifest names {f.path!r} twice")
            files.add(f.path)
            if f.chunks is not None and not f.chunks.tiles(f.size):
                raise CorruptCheckpoint(
                    f"{where}: the chunk table of {f.path} does not tile the file "
                    f"({len(f.chunks.digests)} chunks of {f.chunks.size} bytes for {f.size} bytes)"
                )
            st = f.safetensors
            if st is not None and not 10 <= st.header_bytes == f.size - st.data_bytes:
                raise CorruptCheckpoint(
                    f"{where}: the safetensors index of {f.path} gives {st.header_bytes} header "
                    f"and {st.data_bytes} data bytes for a file of {f.size}"
                )
        for path in files:  # a file cannot also be a directory: "a" and "a/b"
            parts = path.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in files:
                    raise CorruptCheckpoint(
                        f"{where}: manifest names {'/'.join(parts[:i])!r} both as a file and as "
                        f"the directory of {path!r}"
                    )


def reserved_name(name: str) -> bool:
    """A file name the local tier writes into an entry itself: never a model's file."""
    return name in (MANIFEST_NAME, COMPLETE_MARKER) or name.endswith(PARTIAL_SUFFIX)


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a model's file (a phrase), or None for a plain relative path."""
    if not path:
        return "is empty"
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return "holds a NUL or control character"
    if "\\" in path:
        return "holds a backslash"
    if path.startswith("/"):
        return "is absolute"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return "is not a plain relative path (empty, '.' or '..' parts)"
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            return f"has a name longer than {MAX_NAME_BYTES} bytes"
        if reserved_name(part):
            return "is a name the local tier keeps for itself"
    return None


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "the manifest"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _show(value: object) -> str:
    return str(list(value)) if isinstance(value, tuple | list) else str(value)


def chunk_digest(data: bytes | bytearray | memoryview) -> str:
    """The digest of one chunk, as the chunk tables record it. Releases the GIL."""
    return blake3(data, max_threads=1).hexdigest()
