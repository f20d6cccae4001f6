"""Hugging Face hub ids as model references: a merge by id from an offline cache laid out as the
hub writes it (refs/, snapshots/COMMIT/ links into blobs/), revision pinning, the refusal of an id
that is not cached, and a local folder that wins over an id of the same name."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from recall_merge.cli import main as cli_main
from recall_merge.errors import RecallError
from recall_merge.io import hub

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def publish(cache: Path, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",),
            skip: tuple[str, ...] = ()) -> Path:
    """Put ``folder``'s files into ``cache`` as huggingface_hub stores a download of ``repo_id`` at
    ``commit``: content-addressed blobs, a snapshot of relative links to them, refs naming it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name in skip:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(path, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / path.name)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture()
def hub_cache(tiny_models, tmp_path, monkeypatch) -> Path:
    """An offline hub cache holding org/base and org/expert1 (main: e2's weights at COMMIT_B; tag
    v1 and COMMIT_A: e1's), org/expert2 (e2), plus HF_HUB_CACHE and HF_HUB_OFFLINE=1 set."""
    cache = tmp_path / "hf_cache"
    publish(cache, "org/base", tiny_models["base"], COMMIT_A)
    publish(cache, "org/expert1", tiny_models["e1"], COMMIT_A, refs=("v1",))
    publish(cache, "org/expert1", tiny_models["e2"], COMMIT_B, refs=("main",))
    publish(cache, "org/expert2", tiny_models["e2"], COMMIT_A)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _write_config(folder: Path, **values) -> Path:
    config = {"method": "task_arithmetic", "parameters": {"lambda": 0.5}, "output": "merged", **values}
    path = folder / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _merge_cli(config: Path, capsys) -> tuple[int, str]:
    code = cli_main(["merge", str(config), "--quiet"])
    return code, capsys.readouterr().err


def _tensors(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def test_hub_grammar_tells_ids_from_paths(tmp_path):
    assert hub.parse_hub_ref("org/name") == hub.HubRef("org/name")
    assert hub.parse_hub_ref("HuggingFaceTB/SmolLM2-135M@v1.0") == hub.HubRef("HuggingFaceTB/SmolLM2-135M", "v1.0")
    assert hub.parse_hub_ref("org/name@refs/pr/1") == hub.HubRef("org/name", "refs/pr/1")
    for not_an_id in ("smollm2", "/abs/org/name", "./org/name", "a/b/c", "org/", "-org/name", "org/na--me",
                      "org/name@", "org/name@a b", "../name", "org/name.git", ""):
        assert hub.parse_hub_ref(not_an_id) is None, not_an_id
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not hub.is_hub_ref("org/name", tmp_path)  # an existing path is the local folder
    assert hub.is_hub_ref("org/other", tmp_path)
    assert hub.normalise_ref({"id": "org/name", "revision": "v2"}) == "org/name@v2"
    assert hub.normalise_ref({"id": "org/name"}) == "org/name"


def test_merge_by_hub_id_equals_the_local_merge_and_records_the_commits(hub_cache, tiny_models, tmp_path,
                                                                         capsys):
    work = tmp_path / "work"
    work.mkdir()
    config = _write_config(work, base="org/base", models=["org/expert1@v1", {"id": "org/expert2"}])
    code, err = _merge_cli(config, capsys)
    assert code == 0, err
    local = tmp_path / "local"
    local.mkdir()
    local_config = _write_config(local, base=str(tiny_models["base"]),
                                 models=[str(tiny_models["e1"]), str(tiny_models["e2"])])
    assert _merge_cli(local_config, capsys)[0] == 0
    by_id, by_path = _tensors(work / "merged"), _tensors(local / "merged")
    assert by_id.keys() == by_path.keys()
    assert all(by_id[name].equal(by_path[name]) for name in by_id)

    report = json.loads((work / "merged" / "recall_report.json").read_text())
    assert report["hub"] == [{"id": "org/base", "revision": None, "commit": COMMIT_A},
                             {"id": "org/expert1", "revision": "v1", "commit": COMMIT_A},
                             {"id": "org/expert2", "revision": None, "commit": COMMIT_A}]
    assert report["config"]["models"] == ["org/expert1@v1", "org/expert2"]
    assert all(str(hub_cache) in folder for folder in report["models"])
    card = (work / "merged" / "README.md").read_text()
    assert "base_model: org/base\n" in card
    for pinned in (f"org/base@{COMMIT_A}", f"org/expert1@{COMMIT_A}", f"org/expert2@{COMMIT_A}"):
        assert f"`{pinned}`" in card  # the models table
        assert f"{pinned}\n" in card  # the reproducible config, pinned to the commit used
    # the tokenizer and configs came through the cache's links into the merged folder
    assert (work / "merged" / "tokenizer.json").is_file() and not (work / "merged" / "tokenizer.json").is_symlink()


def test_revision_pinning_picks_the_snapshot(hub_cache, tiny_models, tmp_path, capsys):
    outputs = {}
    for label, ref in (("main", "org/expert1"), ("commit", f"org/expert1@{COMMIT_A}"), ("tag", "org/expert1@v1")):
        work = tmp_path / label
        work.mkdir()
        code, err = _merge_cli(_write_config(work, base="org/base", models=[ref]), capsys)
        assert code == 0, err
        outputs[label] = work / "merged"
    main_report = json.loads((outputs["main"] / "recall_report.json").read_text())
    assert main_report["hub"][1]["commit"] == COMMIT_B
    pinned = json.loads((outputs["commit"] / "recall_report.json").read_text())
    assert pinned["hub"][1] == {"id": "org/expert1", "revision": COMMIT_A, "commit": COMMIT_A}
    first, tagged, latest = (_tensors(outputs[k]) for k in ("commit", "tag", "main"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert first[name].equal(tagged[name]) and not first[name].equal(latest[name])


def test_missing_id_offline_exits_2_naming_the_id_and_the_fetch(hub_cache, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    code, err = _merge_cli(_write_config(work, base="org/base", models=["someone/not-cached"]), capsys)
    assert code == 2
    assert "someone/not-cached" in err and "hf download someone/not-cached" in err
    assert "HF_HUB_OFFLINE" in err and "Traceback" not in err
    assert not (work / "merged").exists()


def test_revision_not_in_cache_exits_2_naming_it(hub_cache, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    code, err = _merge_cli(_write_config(work, base="org/base", models=["org/expert1@v2"]), capsys)
    assert code == 2
    assert "revision 'v2' of" in err and "org/expert1" in err
    assert "hf download org/expert1 --revision v2" in err and "Traceback" not in err


def test_incomplete_snapshot_is_refused_before_any_weight_is_read(hub_cache, tiny_models, tmp_path, capsys):
    publish(hub_cache, "org/half", tiny_models["e1"], COMMIT_A, skip=("model.safetensors",))
    work = tmp_path / "work"
    work.mkdir()
    code, err = _merge_cli(_write_config(work, base="org/base", models=["org/half"]), capsys)
    assert code == 2 and "Traceback" not in err
    assert "org/half" in err and "no safetensors weights" in err and "hf download org/half" in err


def test_a_local_folder_named_like_an_id_wins(hub_cache, tiny_models, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copytree(tiny_models["e3"], work / "org" / "expert2")  # not the cache's org/expert2 (e2)
    code, err = _merge_cli(_write_config(work, base="org/base", models=["org/expert2"]), capsys)
    assert code == 0, err
    report = json.loads((work / "merged" / "recall_report.json").read_text())
    assert report["hub"][0]["id"] == "org/base" and report["hub"][1] is None
    assert report["models"][1] == str((work / "org" / "expert2").resolve())
    local = tmp_path / "local"
    local.mkdir()
    assert _merge_cli(_write_config(local, base=str(tiny_models["base"]), models=[str(tiny_models["e3"])]),
                      capsys)[0] == 0
    name = "model.layers.1.mlp.up_proj.weight"
    assert _tensors(work / "merged")[name].equal(_tensors(local / "merged")[name])


def test_a_missing_path_that_is_no_id_keeps_the_folder_error(hub_cache, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    code, err = _merge_cli(_write_config(work, base="org/base", models=["experts/a/b"]), capsys)
    assert code == 2 and "does not exist" in err and "hf download" not in err


def test_continual_config_resolves_a_hub_model_to_its_snapshot(hub_cache, tmp_path):
    from recall_merge.continual.config import load_continual_config

    values = {"tasks": ["synthetic:alpha"], "strategies": ["sequential"], "run_dir": str(tmp_path / "run")}
    config = load_continual_config({**values, "model": {"id": "org/base", "revision": COMMIT_A}})
    assert Path(config.model) == hub_cache / "models--org--base" / "snapshots" / COMMIT_A
    with pytest.raises(RecallError) as refused:
        load_continual_config({**values, "model": "org/not-cached"})
    assert "hf download org/not-cached" in refused.value.fix


def test_online_fetch_asks_only_for_the_files_a_merge_reads(hub_cache, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []

    def recorded_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(hub_cache / "models--org--base" / "snapshots" / COMMIT_A)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recorded_download)
    repository = ["model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
                  "pytorch_model.bin", "pytorch_model.bin.index.json", "training_args.bin", "consolidated.pt",
                  "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "adapter_config.json",
                  "adapter_model.safetensors", "adapter_model.bin", "modeling_custom.py", "README.md",
                  "onnx/model.onnx", "original/consolidated.safetensors", "flax_model.msgpack"]
    wanted = {"model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
              "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "adapter_config.json",
              "adapter_model.safetensors"}
    for trust, expected in ((False, wanted), (True, wanted | {"modeling_custom.py"})):
        snapshot = hub.resolve("org/base@main", trust_remote_code=trust)
        assert snapshot.commit == COMMIT_A and snapshot.revision == "main"
        repo_id, kwargs = calls[-1]
        assert repo_id == "org/base" and kwargs["revision"] == "main"
        assert kwargs["local_files_only"] is False and Path(kwargs["cache_dir"]) == hub_cache
        fetched = set(filter_repo_objects(repository, allow_patterns=kwargs["allow_patterns"],
                                          ignore_patterns=kwargs["ignore_patterns"]))
        assert fetched == expected
    assert len(calls) == 2
    hub.resolve("org/base@main")  # resolved once per process: no second look-up
    assert len(calls) == 2
