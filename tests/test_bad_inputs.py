"""A catalogue of bad inputs: each must fail early with the right error class, a message that
names the problem and the fix, exit status 2 from the CLI, and nothing at the output path."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from recall_merge import merge
from recall_merge.cli import main as cli_main
from recall_merge.config import load_config
from recall_merge.errors import CheckpointError, ConfigError, OutputError, SampleError
from recall_merge.testing import make_tiny_llama, make_tiny_lora


def _base_config(tiny, tmp: Path) -> dict:
    return {"method": "recall", "base": str(tiny["base"]), "models": [str(tiny["e1"]), str(tiny["e2"])],
            "samples": str(tiny["samples"]), "output": str(tmp / "out"), "seed": 0,
            "parameters": {"num_typical": 4}}


def _copy_model(tiny, tmp: Path, name: str = "broken") -> Path:
    target = tmp / name
    shutil.copytree(tiny["e1"], target)
    return target


def _with_model(tiny, tmp, folder: Path) -> dict:
    config = _base_config(tiny, tmp)
    config["models"] = [str(tiny["e1"]), str(folder)]
    return config


def _write_weights(folder: Path, mutate: Callable[[dict], None]) -> None:
    tensors = load_file(folder / "model.safetensors")
    mutate(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


# Each case: (id, builder(tiny, tmp) -> config dict or raw YAML text, error class, message part)
def malformed_yaml(tiny, tmp):
    return "method: recall\nbase: [unclosed\n"


def unknown_top_key(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["modles"] = config.pop("models")
    return config


def unknown_parameter(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["parameters"]["temprature"] = 0.5
    return config


def wrong_type(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["parameters"]["num_typical"] = "many"
    return config


def negative_temperature(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["parameters"]["temperature"] = -1.0
    return config


def zero_typical(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["parameters"]["num_typical"] = 0
    return config


def negative_bandwidth(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["parameters"]["bandwidth"] = -2.0
    return config


def unknown_method(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["method"] = "recal"
    return config


def bad_shard_size(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["shard_size"] = "huge"
    return config


def empty_models(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["models"] = []
    return config


def config_is_a_list(tiny, tmp):
    return "- method: recall\n"


def empty_config(tiny, tmp):
    return ""


def missing_base(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["base"] = str(tmp / "no_such_model")
    return config


def missing_model(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["models"] = [str(tmp / "nowhere")]
    return config


def missing_samples(tiny, tmp):
    config = _base_config(tiny, tmp)
    config["samples"] = str(tmp / "missing.jsonl")
    return config


def no_samples_for_recall(tiny, tmp):
    config = _base_config(tiny, tmp)
    del config["samples"]
    return config


def no_config_json(tiny, tmp):
    folder = _copy_model(tiny, tmp)
    (folder / "config.json").unlink()
    return _with_model(tiny, tmp, folder)


def missing_shard(tiny, tmp):
    folder = make_tiny_llama(tmp / "sharded", seed=3, tokenizer_from=tiny["base"],
                             perturb_from=tiny["base"], max_shard_size="100KB")
    sorted(folder.glob("model-*.safetensors"))[1].unlink()
    return _with_model(tiny, tmp, folder)


def truncated_safetensors(tiny, tmp):
    folder = _copy_model(tiny, tmp)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return _with_model(tiny, tmp, folder)


def corrupted_header(tiny, tmp):
    folder = _copy_model(tiny, tmp)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[8:16] = b"\xff\xfe garb"
    (folder / "model.safetensors").write_bytes(bytes(data))
    return _with_model(tiny, tmp, folder)


def header_lies_about_sizes(tiny, tmp):
    folder = _copy_model(tiny, tmp)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [dim * 2 for dim in header[name]["shape"]]
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length:])
    return _with_model(tiny, tmp, folder)


def nan_weights(tiny, tmp):
    folder = _copy_model(tiny, tmp)

    def poison(tensors):
        tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")

    _write_weights(folder, poison)
    return _with_model(tiny, tmp, folder)


def inf_weights(tiny, tmp):
    folder = _copy_model(tiny, tmp)

    def poison(tensors):
        tensors["model.norm.weight"][3] = float("inf")

    _write_weights(folder, poison)
    return _with_model(tiny, tmp, folder)


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def other_architecture(tiny, tmp):
    folder = _copy_model(tiny, tmp)
    _edit_config(folder, model_type="mistral", architectures=["MistralForCausalLM"])
    return _with_model(tiny, tmp, folder)


def other_depth(tiny, tmp):
    folder = make_tiny_llama(tmp / "deep", seed=5, num_layers=3, tokenizer_from=tiny["base"])
    return _with_model(tiny, tmp, folder)


def other_hidden_size(tiny, tmp):
    folder = make_tiny_llama(tmp / "wide", seed=5, hidden=32, tokenizer_from=tiny["base"])
    return _with_model(tiny, tmp, folder)


def other_vocabulary(tiny, tmp):
    folder = _copy_model(tiny, tmp)
    _edit_config(folder, vocab_size=999)
    return _with_model(tiny, tmp, folder)


def tensor_shape_mismatch(tiny, tmp):
    folder = _copy_model(tiny, tmp)

    def reshape(tensors):
        tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(64, 64)

    _write_weights(folder, reshape)
    return _with_model(tiny, tmp, folder)


def lora_for_another_base(tiny, tmp):
    other_base = make_tiny_llama(tmp / "other_base", seed=9, hidden=32, tokenizer_from=tiny["base"])
    adapter = make_tiny_lora(tmp / "foreign_lora", other_base, seed=1)
    return _with_model(tiny, tmp, adapter)


def lora_rank_mismatch(tiny, tmp):
    adapter = make_tiny_lora(tmp / "lora_bad", tiny["base"], seed=1)
    weights = load_file(adapter / "adapter_model.safetensors")
    key = next(k for k in weights if "lora_B" in k)
    weights[key] = torch.zeros(weights[key].shape[0], weights[key].shape[1] + 2)
    save_file(weights, adapter / "adapter_model.safetensors")
    return _with_model(tiny, tmp, adapter)


def lora_targets_missing_module(tiny, tmp):
    adapter = make_tiny_lora(tmp / "lora_missing", tiny["base"], seed=1)
    weights = load_file(adapter / "adapter_model.safetensors")
    renamed = {k.replace("q_proj", "query_key_value"): v for k, v in weights.items()}
    save_file(renamed, adapter / "adapter_model.safetensors")
    return _with_model(tiny, tmp, adapter)


def base_is_an_adapter(tiny, tmp):
    adapter = make_tiny_lora(tmp / "lora_as_base", tiny["base"], seed=1)
    config = _base_config(tiny, tmp)
    config["base"] = str(adapter)
    return config


def _samples(tiny, tmp, content: bytes, suffix: str = ".jsonl") -> dict:
    path = tmp / f"samples{suffix}"
    path.write_bytes(content)
    config = _base_config(tiny, tmp)
    config["samples"] = str(path)
    return config


def empty_samples(tiny, tmp):
    return _samples(tiny, tmp, b"")


def too_few_samples(tiny, tmp):
    return _samples(tiny, tmp, b'{"text": "one"}\n{"text": "two"}\n')


def non_utf8_samples(tiny, tmp):
    return _samples(tiny, tmp, b"caf\xe9 au lait\nplain line\n", suffix=".txt")


def enormous_line(tiny, tmp):
    return _samples(tiny, tmp, (b"word " * 50_000) + b"\n", suffix=".txt")


def samples_not_json(tiny, tmp):
    return _samples(tiny, tmp, b'{"text": "ok"}\nnot json at all\n')


def samples_without_text_field(tiny, tmp):
    return _samples(tiny, tmp, b'{"sentence": "a"}\n' * 8)


def output_inside_input(tiny, tmp):
    folder = _copy_model(tiny, tmp, "host")
    config = _with_model(tiny, tmp, folder)
    config["output"] = str(folder / "merged")
    return config


def pickle_checkpoint(tiny, tmp):
    folder = _copy_model(tiny, tmp)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return _with_model(tiny, tmp, folder)


def remote_code(tiny, tmp):
    folder = _copy_model(tiny, tmp)
    _edit_config(folder, auto_map={"AutoModelForCausalLM": "modeling_evil.EvilModel"})
    return _with_model(tiny, tmp, folder)


CASES = [
    (malformed_yaml, ConfigError, "not valid YAML"),
    (unknown_top_key, ConfigError, "did you mean 'models'"),
    (unknown_parameter, ConfigError, "did you mean 'temperature'"),
    (wrong_type, ConfigError, "num_typical"),
    (negative_temperature, ConfigError, "temperature"),
    (zero_typical, ConfigError, "num_typical"),
    (negative_bandwidth, ConfigError, "bandwidth"),
    (unknown_method, ConfigError, "did you mean 'recall'"),
    (bad_shard_size, ConfigError, "shard_size"),
    (empty_models, ConfigError, "models"),
    (config_is_a_list, ConfigError, "mapping"),
    (empty_config, ConfigError, "empty"),
    (missing_base, CheckpointError, "does not exist"),
    (missing_model, CheckpointError, "does not exist"),
    (missing_samples, SampleError, "does not exist"),
    (no_samples_for_recall, ConfigError, "needs `samples`"),
    (no_config_json, CheckpointError, "no config.json"),
    (missing_shard, CheckpointError, "missing"),
    (truncated_safetensors, CheckpointError, "truncated"),
    (corrupted_header, CheckpointError, "not a safetensors file"),
    (header_lies_about_sizes, CheckpointError, "header lies"),
    (nan_weights, CheckpointError, "model.layers.1.mlp.up_proj.weight"),
    (inf_weights, CheckpointError, "NaN or Inf"),
    (other_architecture, CheckpointError, "model_type"),
    (other_depth, CheckpointError, "num_hidden_layers"),
    (other_hidden_size, CheckpointError, "hidden_size"),
    (other_vocabulary, CheckpointError, "vocab_size"),
    (tensor_shape_mismatch, CheckpointError, "shape"),
    (lora_for_another_base, CheckpointError, "another base"),
    (lora_rank_mismatch, CheckpointError, "rank or target mismatch"),
    (lora_targets_missing_module, CheckpointError, "another base"),
    (base_is_an_adapter, CheckpointError, "LoRA adapter"),
    (empty_samples, SampleError, "empty"),
    (too_few_samples, SampleError, "num_typical"),
    (non_utf8_samples, SampleError, "not UTF-8"),
    (enormous_line, SampleError, "characters"),
    (samples_not_json, SampleError, "not JSON"),
    (samples_without_text_field, SampleError, '"text"'),
    (output_inside_input, OutputError, "inside input"),
    (pickle_checkpoint, CheckpointError, "allow_pickle"),
    (remote_code, CheckpointError, "trust_remote_code"),
]


def _write_config(built, tmp: Path) -> Path:
    path = tmp / "merge.yaml"
    path.write_text(built if isinstance(built, str) else yaml.safe_dump(built))
    return path


@pytest.mark.parametrize(("builder", "error_class", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_is_refused_clearly(builder, error_class, message, tiny_models, tmp_path, capsys):
    built = builder(tiny_models, tmp_path)
    config_path = _write_config(built, tmp_path)
    with pytest.raises(error_class) as caught:
        merge(load_config(config_path), quiet=True)
    assert message in str(caught.value)
    assert caught.value.fix, "every error names a fix"
    assert cli_main(["merge", str(config_path), "--quiet"]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and "fix:" in stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temporary folder left"


def test_output_that_exists_is_refused_and_untouched(tiny_models, tmp_path, capsys):
    config = _base_config(tiny_models, tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    path = _write_config(config, tmp_path)
    with pytest.raises(OutputError, match="already exists"):
        merge(load_config(path), quiet=True)
    assert cli_main(["merge", str(path), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_full_disk_is_refused_before_writing(tiny_models, tmp_path, monkeypatch):
    import recall_merge.io.output as output

    real = shutil.disk_usage
    monkeypatch.setattr(output.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(OutputError, match="not enough free disk space"):
        merge(_base_config(tiny_models, tmp_path), quiet=True)
    assert not (tmp_path / "out").exists()


def test_disk_filling_up_mid_merge_leaves_nothing(tiny_models, tmp_path, monkeypatch):
    import errno

    from recall_merge.io import writer

    calls = {"count": 0}
    real_write = writer.StreamingShardWriter.write_part

    def failing_write(self, name, tensor, last):
        calls["count"] += 1
        if calls["count"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, name, tensor, last)

    monkeypatch.setattr(writer.StreamingShardWriter, "write_part", failing_write)
    with pytest.raises(OutputError, match="disk is full"):
        merge(_base_config(tiny_models, tmp_path), quiet=True)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_pickle_checkpoint_loads_when_allowed(tiny_models, tmp_path):
    config = pickle_checkpoint(tiny_models, tmp_path)
    config["allow_pickle"] = True
    result = merge(config, quiet=True)
    assert (result.output / "model.safetensors").exists()
