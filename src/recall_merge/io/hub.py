"""Hugging Face Hub ids as model references, resolved into the standard Hugging Face cache.

Wherever a config names a model (a merge's ``base`` and ``models``, a continual run's ``model``),
it may give a hub id ``org/name``, optionally pinned as ``org/name@revision`` (a branch, tag or
commit) or written as the mapping ``{id: org/name, revision: REV}``. The rules that tell a local
path from a hub id:

- a path that exists (relative paths against the config file's folder) is always the local folder;
- otherwise a string with the hub grammar ``org/name`` (one slash, letters, digits, ``-``, ``_``,
  ``.``) is a hub id;
- anything else stays a path, and whoever opens it says that the folder does not exist.

Resolution goes through ``huggingface_hub.snapshot_download`` into the ordinary cache
(``HF_HUB_CACHE``, else ``HF_HOME/hub``), so a model fetched by ``hf download`` is found and one
fetched here is shared with transformers. Only the files a merge reads are fetched: safetensors
weights and their index, the model and generation configs, the tokenizer, a PEFT adapter's config
and weights; never pickles (``*.bin``, ``*.pt``), and Python files only with
``trust_remote_code``. ``HF_HUB_OFFLINE`` is read when a reference is resolved (the ``recall``
command sets it to 1 unless it is already set), and offline nothing but the cache is consulted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recall_merge.errors import CheckpointError, ConfigValueError, excerpt
from recall_merge.io.reader import TOKENIZER_JSON_FILES, TOKENIZER_OTHER_FILES

# The files of a repository a merge reads; everything else (pickles, ONNX, GGUF, images, other
# variants in sub-folders) stays on the Hub.
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
CONFIG_FILES = ("config.json", "generation_config.json", "adapter_config.json")
CODE_PATTERNS = ("*.py",)
_TOP_LEVEL_ONLY = ("*/*",)  # snapshot_download's patterns are fnmatch globs: '*' crosses '/'

# A hub id: ORG/NAME, each part letters, digits, '-', '_', '.', starting and ending with a letter
# or digit (huggingface_hub's own rules add: no '--' or '..', at most 96 characters).
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_HUB_REF = re.compile(rf"^(?P<id>{_PART}/{_PART})(?:@(?P<revision>[^\s@]+))?$")
_MAX_ID_CHARS = 96
_MAX_REVISION_CHARS = 255
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubRef:
    """A hub id and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class HubSnapshot:
    """Where a hub reference resolved to: the snapshot folder and the commit it holds."""

    repo_id: str
    revision: str | None  # as asked for
    commit: str  # the commit hash the snapshot holds
    folder: Path

    def pinned(self) -> str:
        """``org/name@COMMIT``: the reference that rebuilds exactly this input."""
        return f"{self.repo_id}@{self.commit}"



def parse_hub_ref(text: Any) -> HubRef | None:
    """The hub id (and revision) ``text`` spells, or None when it does not have the grammar of one.
    Says nothing about whether a local path of that name exists: see :func:`is_hub_ref`."""
    if not isinstance(text, str):
        return None
    match = _HUB_REF.match(text.strip())
    if match is None:
        return None
    repo_id, revision = match.group("id"), match.group("revision")
    if len(repo_id) > _MAX_ID_CHARS or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        return None
    if revision is not None and (len(revision) > _MAX_REVISION_CHARS or ".." in revision):
        return None
    return HubRef(repo_id, revision)


def is_hub_ref(text: Any, base_dir: Path | None = None) -> bool:
    """True when ``text`` means a hub id: it has the hub grammar and no such path exists
    (relative paths against ``base_dir``, else the current directory). A local path always wins."""
    if parse_hub_ref(text) is None:
        return False
    try:
        local = (Path(base_dir) / text) if base_dir is not None else Path(text)
        return not (local.exists() or local.is_symlink())
    except (OSError, ValueError):
        return False


def normalise_ref(value: Any) -> Any:
    """A model reference written as the mapping ``{id: ORG/NAME, revision: REV}`` → the string
    ``ORG/NAME@REV``; anything else is returned as it is (a pydantic ``before`` validator)."""
    if not isinstance(value, dict):
        return value
    fix = "write a hub model as `org/name`, `org/name@revision`, or {id: org/name, revision: REV}"
    unknown = sorted(str(key) for key in value if key not in ("id", "revision"))
    if unknown:
        raise ConfigValueError(f"a model given as a mapping has unknown key(s) {excerpt(unknown, 120)}",
                               fix)
    repo_id, revision = value.get("id"), value.get("revision")
    if not isinstance(repo_id, str) or parse_hub_ref(repo_id) is None or "@" in repo_id:
        raise ConfigValueError(f"a model mapping's id {excerpt(repo_id, 120)} is not a hub id (org/name)",
                               fix)
    if revision is None:
        return repo_id
    if not isinstance(revision, str) or parse_hub_ref(f"{repo_id}@{revision}") is None:
        raise ConfigValueError(f"the revision {excerpt(revision, 120)} of {repo_id} is not a branch, tag "
                               "or commit name", fix)
    return f"{repo_id}@{revision}"


# ------------------------------------------------------------------------------- resolution
def offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, but read now: the library reads it once at
    import, and a test or a calling program may set it later."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def cache_dir() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE`` (or the older ``HUGGINGFACE_HUB_CACHE``), else
    ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``; read now, for the same reason."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(key):
            return Path(os.environ[key]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def allow_patterns(trust_remote_code: bool = False) -> list[str]:
    """The globs of the files fetched for a model (see the module's docstring)."""
    patterns = [*WEIGHT_PATTERNS, *CONFIG_FILES, *TOKENIZER_JSON_FILES, *TOKENIZER_OTHER_FILES]
    return patterns + (list(CODE_PATTERNS) if trust_remote_code else [])


# (repo id, revision, cache, offline, trust_remote_code) → snapshot: a config is resolved when it
# is loaded, and the merge it describes must open the very same snapshot, not look again.
_RESOLVED: dict[tuple[str, str | None, str, bool, bool], HubSnapshot] = {}


def resolve(ref: str | HubRef, *, trust_remote_code: bool = False, key: str = "model") -> HubSnapshot:
    """The local snapshot of a hub reference, fetched into the cache when online and missing.

    Raises :class:`CheckpointError` (problem and fix) for every way this can fail: offline and
    not cached, a revision that is not cached or does not exist, a repository that does not exist
    or is gated, no network. ``key`` names the config entry in the message.
    """
    hub_ref = ref if isinstance(ref, HubRef) else parse_hub_ref(ref)
    if hub_ref is None:
        raise CheckpointError(f"{key} {excerpt(str(ref))} is not a hub id",
                              "write a hub model as org/name or org/name@revision")
    cache, is_offline = cache_dir(), offline()
    memo = (hub_ref.repo_id, hub_ref.revision, str(cache), is_offline, trust_remote_code)
    if memo in _RESOLVED and _RESOLVED[memo].folder.is_dir():
        return _RESOLVED[memo]
    folder = _snapshot_download(hub_ref, cache, is_offline, trust_remote_code, key)
    snapshot = HubSnapshot(hub_ref.repo_id, hub_ref.revision, folder.name, folder)
    _RESOLVED[memo] = snapshot
    return snapshot


def resolved_snapshot(ref: str) -> HubSnapshot | None:
    """The snapshot a hub reference was already resolved to in this process, under the current
    cache and offline setting (with or without code files), or None. Lets the merge open exactly
    what the config load resolved."""
    hub_ref = parse_hub_ref(ref)
    if hub_ref is None:
        return None
    cache, is_offline = str(cache_dir()), offline()
    for (repo_id, revision, memo_cache, memo_offline, _), snapshot in reversed(_RESOLVED.items()):
        if (repo_id, revision, memo_cache, memo_offline) == (hub_ref.repo_id, hub_ref.revision, cache,
                                                              is_offline):
            return snapshot
    return None


def snapshot_record(ref: Any) -> dict[str, Any] | None:
    """For reports: ``{id, revision, commit}`` of a reference that came from the hub (as resolved
    in this process), None for a local folder or a packaged name."""
    if not isinstance(ref, str) or Path(ref).exists():
        return None
    snapshot = resolved_snapshot(ref)
    if snapshot is None:
        return None
    return {"id": snapshot.repo_id, "revision": snapshot.revision, "commit": snapshot.commit}


def _fetch_command(hub_ref: HubRef) -> str:
    revision = f" --revision {hub_ref.revision}" if hub_ref.revision else ""
    return f"`hf download {hub_ref.repo_id}{revision}` (`huggingface-cli download` with older huggingface_hub)"


def _snapshot_download(hub_ref: HubRef, cache: Path, is_offline: bool, trust_remote_code: bool,
                       key: str) -> Path:
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    shown = str(hub_ref)
    revision_text = f"revision {hub_ref.revision!r} of " if hub_ref.revision else ""
    stored = cache / ("models--" + hub_ref.repo_id.replace("/", "--"))
    local_hint = (f" (if {key} {shown!r} is meant as a local folder: no such path exists; relative paths "
                  "are read from the config file's folder)")
    # newer huggingface_hub only: a snapshot folder whose cached file listing shows missing files
    incomplete = getattr(hub_errors, "IncompleteSnapshotError", ())
    try:
        folder = snapshot_download(
            hub_ref.repo_id, revision=hub_ref.revision, cache_dir=cache, local_files_only=is_offline,
            allow_patterns=allow_patterns(trust_remote_code), ignore_patterns=list(_TOP_LEVEL_ONLY))
    except incomplete:
        raise CheckpointError(f"{key}: the cached copy of the hub model {shown} is incomplete (an "
                              "interrupted download)",
                              f"complete it with {_fetch_command(hub_ref)}, or run with "
                              "HF_HUB_OFFLINE=0") from None
    except LocalEntryNotFoundError as exc:
        fetch = _fetch_command(hub_ref)
        if is_offline:
            cached_at_all = (stored / "snapshots").is_dir()
            what = (f"the {revision_text}hub model {hub_ref.repo_id}" if cached_at_all
                    else f"the hub model {shown}")
            raise CheckpointError(
                f"{key}: {what} is not in the Hugging Face cache ({cache}), and HF_HUB_OFFLINE is set, "
                f"so nothing is downloaded{local_hint}",
                f"fetch it with {fetch}, or run with HF_HUB_OFFLINE=0 to let recall download it "
                "(the recall command works offline unless HF_HUB_OFFLINE=0 is set)") from None
        raise CheckpointError(
            f"{key}: the hub model {shown} could not be downloaded and is not in the cache ({cache}): "
            f"{excerpt(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)}{local_hint}",
            f"check the network connection and try again, or fetch it with {fetch}") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{key}: the hub model {hub_ref.repo_id} has no revision "
                              f"{hub_ref.revision!r}", "give an existing branch, tag or commit hash "
                              "(see the repository's 'Files and versions' page)") from None
    except GatedRepoError:
        raise CheckpointError(f"{key}: the hub model {hub_ref.repo_id} is gated: its terms must be "
                              "accepted, and a token sent", "accept its terms on huggingface.co, then "
                              "`hf auth login` (or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{key}: no hub model {hub_ref.repo_id} exists (or it is private){local_hint}",
                              "check the id's spelling; for a private model `hf auth login` (or set "
                              "HF_TOKEN)") from None
    except HFValidationError as exc:
        raise CheckpointError(f"{key}: {shown!r} is not a valid hub id: {excerpt(str(exc), 200)}",
                              "write a hub model as org/name or org/name@revision") from None
    except HfHubHTTPError as exc:
        raise CheckpointError(f"{key}: downloading the hub model {shown} failed: {excerpt(str(exc), 200)}",
                              "try again later, or fetch it with " + _fetch_command(hub_ref)) from None
    except ValueError as exc:  # huggingface_hub refuses an argument (a revision it cannot use)
        raise CheckpointError(f"{key}: the hub model {shown} cannot be used from the cache: "
                              f"{excerpt(str(exc), 300)}",
                              f"complete the download with {_fetch_command(hub_ref)}") from None
    folder = Path(folder)
    if not _COMMIT.match(folder.name):
        # snapshot_download returns cache/models--org--name/snapshots/COMMIT; anything else is not
        # the layout this module records revisions from
        raise CheckpointError(f"{key}: the hub model {shown} resolved to {folder}, which is not a "
                              "snapshot folder of the Hugging Face cache",
                              "check HF_HUB_CACHE (it must be a hub cache, not a local_dir)")
    if not any(folder.glob("*.safetensors")):
        # only safetensors are fetched: a repository of pickles alone, or a partial download
        raise CheckpointError(
            f"{key}: the hub model {shown} (commit {folder.name}) has no safetensors weights in the cache "
            f"({folder}): its download is incomplete, or the repository ships only pickle files "
            "(*.bin, *.pt), which recall never downloads",
            f"complete the download with {_fetch_command(hub_ref)}; for a pickle-only repository, "
            "download it, convert it to safetensors and give the local folder")
    return folder
