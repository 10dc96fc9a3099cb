"""``ember cache push|pull|ls|verify|evict``: the regional cache (S3) and the node's local tier.

S3 access uses the standard AWS variables and files (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, profiles, instance roles). A ranged read gives
up after ``EMBER_STORE_RANGE_DEADLINE_S`` seconds (default 300), and an attempt at one slower than
``EMBER_STORE_MIN_RATE_KIB_S`` KiB/s (default 256; 0: off) is cut off and retried. Every failure
exits non-zero with one line saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weight_cache import WeightCacheError

if TYPE_CHECKING:
    from weight_cache import StoreLimits

DEFAULT_CACHE_DIR = "~/.cache/ember"


class Progress:
    """Bytes done of a total, on stderr: a live line on a terminal, a line every 10% otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.started = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._next_pct = 10

    def __call__(self, n: int) -> None:
        self.done += n
        pct = min(100, self.done * 100 // self.total)
        if self.tty:
            print(f"\r{self.label}: {pct:3d}% {self._rate()}", end="", file=sys.stderr, flush=True)
        elif pct >= self._next_pct:
            print(f"{self.label}: {pct}% {self._rate()}", file=sys.stderr, flush=True)
            self._next_pct = pct // 10 * 10 + 10

    def _rate(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        done, total, rate = self.done / 1e6, self.total / 1e6, self.done / elapsed / 1e6
        return f"({done:.1f} of {total:.1f} MB, {rate:.0f} MB/s)"

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def cache_dir(args: argparse.Namespace) -> Path:
    raw = args.cache_dir or os.environ.get("EMBER_CACHE_DIR") or DEFAULT_CACHE_DIR
    return Path(raw).expanduser()


def store_limits(args: argparse.Namespace) -> StoreLimits:
    """The ranged-read limits: the flags, else the environment, else the defaults."""
    from weight_cache import StoreLimits

    env = StoreLimits.from_env(os.environ)
    deadline, rate = args.range_deadline_s, args.min_rate_kib_s
    return StoreLimits(
        range_deadline_s=env.range_deadline_s if deadline is None else deadline,
        min_rate_bytes_s=env.min_rate_bytes_s if rate is None else rate * 1024,
    )


async def _push(args: argparse.Namespace) -> int:
    from weight_cache import open_store, push_source, total_bytes

    source = args.source
    progress = None
    if not source.startswith("hf://"):
        if not await asyncio.to_thread(Path(source).is_dir):
            raise WeightCacheError(f"{source} is not a directory (or hf://org/repo[@revision])")
        size = await asyncio.to_thread(total_bytes, Path(source))
        progress = Progress(f"push {args.dest}", size)
    try:
        async with open_store(args.dest) as store:
            manifest = await push_source(
                store,
                source,
                concurrency=args.concurrency,
                progress=progress,
                chunk_bytes=args.chunk_mb << 20,
            )
    finally:
        if progress is not None:
            progress.close()
    count = len(manifest.files)
    print(
        f"pushed {count} file{'' if count == 1 else 's'}, {manifest.total_bytes} bytes, "
        f"to {args.dest}"
    )
    return 0


async def _pull(args: argparse.Namespace) -> int:
    from weight_cache import LocalTier, Manifest, parse_source, pull

    limits = store_limits(args)
    source = parse_source(args.source)  # a store's model, or hf:// through the hub's cache
    progress: Progress | None = None

    def planned(manifest: Manifest) -> None:  # the manifest is read: the total is known
        nonlocal progress
        progress = Progress(f"pull {args.source}", manifest.total_bytes)

    def advance(n: int) -> None:
        assert progress is not None  # planned comes first
        progress(n)

    budget = int(args.cache_budget_gb * 1e9) if args.cache_budget_gb else None
    try:
        report = await pull(
            source,
            LocalTier(cache_dir(args), budget_bytes=budget) if source.needs_tier else None,
            progress=advance,
            planned=planned,
            concurrency=args.concurrency,
            chunk_bytes=args.chunk_mb * 1024 * 1024,
            limits=limits,
        )
    finally:
        if progress is not None:
            progress.close()
    if args.link:
        await asyncio.to_thread(_link, Path(args.link), report.path.absolute())
    # stdout is the path alone (MODEL_DIR=$(ember cache pull ...)); how it got there: stderr
    state = "already in the local tier" if report.hit else f"fetched in {report.fetch_s:.2f}s"
    print(report.path)
    print(f"{args.source}: {state}", file=sys.stderr)
    return 0


def _link(link: Path, target: Path) -> None:
    """``link`` made a symbolic link to ``target``, replacing any link there in one rename: a
    program given ``link`` (a command engine's ``{weights}`` on Knative) sees a whole model."""
    partial = link.with_name(f".{link.name}.partial")
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        partial.symlink_to(target, target_is_directory=True)
        partial.replace(link)
    except OSError as exc:
        raise WeightCacheError(f"cannot link {link} to {target}: {exc.strerror or exc}") from None


async def _ls(args: argparse.Namespace) -> int:
    from weight_cache import MANIFEST_NAME, LocalTier, open_store, read_manifest

    if args.local:
        for e in LocalTier(cache_dir(args)).entries():
            used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.last_used))
            print(f"{e.key}  {e.size:>14}  {used}  {e.source}")
        return 0
    if not args.uri:
        raise WeightCacheError("give an s3://bucket/[prefix] to list, or --local")
    async with open_store(args.uri, limits=store_limits(args)) as store:
        for obj in await store.list():
            if obj.key != MANIFEST_NAME and not obj.key.endswith("/" + MANIFEST_NAME):
                continue
            prefix = obj.key.removesuffix(MANIFEST_NAME).rstrip("/")
            manifest = await read_manifest(store, prefix)
            model_uri = f"{store.uri}/{prefix}" if prefix else store.uri
            files, size = len(manifest.files), manifest.total_bytes
            print(f"{model_uri}  {files} files  {size} bytes  from {manifest.source}")
    return 0


async def _verify(args: argparse.Namespace) -> int:
    from weight_cache import open_store, verify_model

    async with open_store(args.uri, limits=store_limits(args)) as store:
        manifest, problems = await verify_model(store)
    if problems:
        raise WeightCacheError(f"{args.uri} fails verification: " + "; ".join(problems))
    files, size = len(manifest.files), manifest.total_bytes
    print(f"{args.uri}: {files} files, {size} bytes, all match the manifest")
    return 0


async def _evict(args: argparse.Namespace) -> int:
    from weight_cache import LocalTier

    if args.all and args.keys:
        raise WeightCacheError("name entries to evict or pass --all, not both")
    if not args.all and not args.keys:
        raise WeightCacheError("name entries to evict (see `ember cache ls --local`) or pass --all")
    tier = LocalTier(cache_dir(args))
    # every name is checked before anything goes: an entry key, or a model URI the tier holds
    keys = [e.key for e in tier.entries()] if args.all else tier.resolve(args.keys)
    busy = [k for k in keys if not tier.evict(k)]
    stale = tier.clean_stale()
    print(
        f"evicted {len(keys) - len(busy)} entries"
        + (f", removed {stale} stale partial fills" if stale else "")
    )
    if busy:
        raise WeightCacheError(f"in use by another process, not evicted: {', '.join(busy)}")
    return 0


def run(args: argparse.Namespace) -> int:
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.cache_func
    try:
        return asyncio.run(command(args))
    except WeightCacheError as exc:
        print(f"ember cache {args.cache_command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = sub.add_parser(
        "cache",
        help="push models to the regional cache (S3) and manage the local tier",
        description=(__doc__ or "").replace("``", ""),  # the docstring's RST, as plain text
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")

    def limits(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--range-deadline-s",
            type=float,
            metavar="SECONDS",
            help="give up on a ranged read (all its attempts) after this long (default "
            "$EMBER_STORE_RANGE_DEADLINE_S or 300)",
        )
        p.add_argument(
            "--min-rate-kib-s",
            type=float,
            metavar="KIB",
            help="cut off an attempt slower than this many KiB/s, after 5 s for its first byte; "
            "0 turns it off (default $EMBER_STORE_MIN_RATE_KIB_S or 256)",
        )

    def local_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--cache-dir",
            help=f"the local tier's directory (default $EMBER_CACHE_DIR or {DEFAULT_CACHE_DIR})",
        )

    push = cmds.add_parser(
        "push", help="upload a model folder (or hf://org/repo[@rev]) with its manifest"
    )
    push.add_argument("source", help="a local folder, or hf://org/repo[@revision]")
    push.add_argument("dest", help="s3://bucket/prefix (or file:///dir)")
    push.add_argument(
        "--concurrency", type=int, default=4, help="files uploaded at once (default 4)"
    )
    push.add_argument(
        "--chunk-mb",
        type=positive_int,
        default=8,
        help="the manifest's chunk size, in MiB: each chunk gets a BLAKE3 digest, and a pull "
        "reads and verifies the file a chunk at a time (default 8)",
    )
    push.set_defaults(cache_func=_push)

    pull = cmds.add_parser("pull", help="stream a pushed model into the local tier")
    pull.add_argument(
        "source",
        help="s3://bucket/prefix (or file:///dir) holding a manifest, or hf://org/repo[@revision] "
        "(resolved through the Hugging Face cache, $HF_HUB_CACHE)",
    )
    pull.add_argument(
        "--concurrency", type=int, default=8, help="ranged reads in flight (default 8)"
    )
    pull.add_argument(
        "--chunk-mb",
        type=positive_int,
        default=8,
        help="bytes per ranged read, in MiB, for a manifest without chunk digests (a newer "
        "one is read a chunk at a time) (default 8)",
    )
    pull.add_argument(
        "--cache-budget-gb",
        type=float,
        metavar="GB",
        help="size budget of the local tier: least recently used models not in use are evicted "
        "to make room (default: none)",
    )
    pull.add_argument(
        "--link",
        metavar="PATH",
        help="also make PATH a symbolic link to the model's folder (replaced atomically): a fixed "
        "path for a program that reads the model (a command engine's {weights} on Knative)",
    )
    limits(pull)
    local_dir(pull)
    pull.set_defaults(cache_func=_pull)

    ls = cmds.add_parser(
        "ls", help="list pushed models under a prefix, or the local tier's entries"
    )
    ls.add_argument("uri", nargs="?", help="s3://bucket/[prefix]")
    ls.add_argument("--local", action="store_true", help="list the local tier instead")
    limits(ls)
    local_dir(ls)
    ls.set_defaults(cache_func=_ls)

    verify = cmds.add_parser(
        "verify", help="re-read a pushed model and check it against its manifest"
    )
    verify.add_argument("uri", help="s3://bucket/prefix")
    limits(verify)
    verify.set_defaults(cache_func=_verify)

    evict = cmds.add_parser("evict", help="remove entries from the local tier")
    evict.add_argument(
        "keys",
        nargs="*",
        metavar="KEY",
        help="entry keys (from `ember cache ls --local`) or model URIs (s3://bucket/prefix, "
        "file:///dir): every entry fetched from one",
    )
    evict.add_argument("--all", action="store_true", help="every entry not in use")
    local_dir(evict)
    evict.set_defaults(cache_func=_evict)

    cache.set_defaults(func=run)
