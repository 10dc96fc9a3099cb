"""``hf://org/repo[@revision]`` sources, resolved through huggingface_hub's own cache.

The Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``)
is the tier of a hub model: :func:`resolve` asks ``snapshot_download`` for the files a handler
reads, which takes them from the cache when they are there and downloads what is missing (each
file checked against the hub's hash as it arrives), and answers the snapshot's directory. With
``HF_HUB_OFFLINE=1`` it reads the cache only, by the revision's ref, and fails clearly when the
model is not in it. A private or gated repository needs ``HF_TOKEN``.
"""

from __future__ import annotations

from pathlib import Path

from weight_cache.errors import BadSource, ObjectMissing, StoreUnavailable
from weight_cache.uri import HF_SCHEME as SCHEME
from weight_cache.uri import PATTERNS
from weight_cache.uri import parse_hf as parse

__all__ = ["PATTERNS", "SCHEME", "parse", "resolve"]


def resolve(source: str) -> Path:
    """The local directory holding the model ``source`` names, from the Hugging Face cache
    (downloading what it lacks, unless offline). ObjectMissing when the hub or the offline cache
    has no such model or revision; StoreUnavailable when the hub cannot be reached."""
    repo, revision = parse(source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = snapshot_download(repo_id=repo, revision=revision, allow_patterns=PATTERNS)
    except LocalEntryNotFoundError as exc:  # offline, or the hub unreachable: not cached
        raise ObjectMissing(
            f"{source}: not in the Hugging Face cache and the hub cannot be asked ({exc}); "
            "download it once online (or set HF_HUB_CACHE to where it is cached)"
        ) from None
    except GatedRepoError as exc:
        raise ObjectMissing(f"{source}: a gated repository; set HF_TOKEN ({exc})") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ObjectMissing(f"{source}: no such model on the hub ({exc})") from None
    except ValueError as exc:  # an id the hub's own rules refuse (HFValidationError)
        raise BadSource(f"{source}: {exc}") from None
    except Exception as exc:  # the hub's HTTP errors, the disk's, and its own types
        raise StoreUnavailable(
            f"{source}: cannot read it from the Hugging Face Hub: {exc}"
        ) from exc
    return Path(path)
