"""Hostile configurations: non-finite or degenerate parameters, YAML alias bombs, seeds out of
range, layer indices past the model, devices the machine lacks, absurd sizes, paths that loop or
cannot exist, command-line paths, and sample files that are not files. Each must be refused as a
RecallError with a fix, exit 2 from ``recall merge``, no traceback, nothing at the output path,
and before any weight is read. Every model here is the tiny synthetic fixture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from recall_merge.cli import main as cli_main
from recall_merge.config import MAX_SEED, check_device, check_output_path, load_config, parse_size
from recall_merge.errors import ConfigError, OutputError, SampleError
from recall_merge.methods.registry import parameters_model
from recall_merge.recall.method import RecallMethod
from recall_merge.recall.samples import MAX_LINE_BYTES, MAX_SAMPLES, read_samples

INF, NAN = float("inf"), float("nan")
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")


@pytest.fixture
def no_weight_reads(monkeypatch):
    """Fail the test if any tensor data is read, or the representation pass starts: every refusal
    here must come from the config, or from it and the models' headers."""
    from recall_merge.io import lora, reader
    from recall_merge.recall import method

    def forbidden(*args, **kwargs):
        raise AssertionError("tensor data was read before the hostile config was refused")

    monkeypatch.setattr(reader.Checkpoint, "get", forbidden)
    monkeypatch.setattr(reader.Checkpoint, "get_mapped", forbidden)
    monkeypatch.setattr(lora._SafetensorsFile, "get", forbidden)
    monkeypatch.setattr(method, "states_for_all_models", forbidden)


def _config(tiny, tmp: Path, method: str = "linear", **changes) -> dict:
    config = {"method": method, "base": str(tiny["base"]), "models": [str(tiny["e1"]), str(tiny["e2"])],
              "samples": str(tiny["samples"]), "output": str(tmp / "out"), "seed": 0, "parameters": {}}
    if method == "recall":
        config["parameters"]["num_typical"] = 3
    config.update(changes)
    return config


def _write(config: dict | str, tmp: Path, name: str = "merge.yaml") -> Path:
    path = tmp / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def _refused(capsys, path: Path, tmp: Path, *fragments: str, command: str = "merge") -> str:
    """`recall merge PATH` (or another command) exits 2 with every fragment and a fix on stderr."""
    assert cli_main([command, str(path), "--quiet"]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert "fix:" in stderr
    for fragment in fragments:
        assert fragment in stderr, f"{fragment!r} not in: {stderr}"
    assert not (tmp / "out").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".out")], "no temporary folder left"
    return stderr


# ---------------------------------------------------------------- 1. non-finite, degenerate values
PARAMETER_CASES = [
    ("linear_weights_cancel", "linear", {"weights": [1.0, -1.0]}, ["weights", "sum to 0", "normalize"]),
    ("linear_weights_zero", "linear", {"weights": [0, 0]}, ["weights", "sum to 0"]),
    # sum 2 at t = 0 (outside the blocks and block 0), 0 at block 1 (t = 1): found at that depth
    ("linear_gradient_cancels_at_last_block", "linear", {"weights": [[1.0, -1.0], 1.0]},
     ["weights", "sum to 0", "block 1"]),
    ("linear_base_weight_cancels", "linear",
     {"include_base": True, "base_weight": -2.0, "weights": [1.0, 1.0]}, ["base_weight", "sum to 0"]),
    ("lambda_huge", "task_arithmetic", {"lambda": 1e39}, ["parameters.lambda", "1000"]),
    ("lambda_nan", "ties", {"lambda": NAN}, ["parameters.lambda", "finite"]),
    ("weights_inf", "task_arithmetic", {"weights": [INF, 1.0]}, ["parameters.weights", "[0]", "finite"]),
    ("weights_nan_inside_gradient", "magmax", {"weights": [[1.0, NAN], 1.0]},
     ["parameters.weights", "[0][1]", "finite"]),
    ("weights_empty_gradient", "task_arithmetic", {"weights": [[], 1.0]}, ["parameters.weights", "empty"]),
    ("weight_too_large", "dare_linear", {"weights": [5e3, 1.0]}, ["parameters.weights", "5000"]),
    ("density_nan", "ties", {"density": NAN}, ["parameters.density", "finite"]),
    ("density_inf_per_model", "dare_ties", {"density": [0.5, INF]}, ["parameters.density", "finite"]),
    ("gamma_inf", "breadcrumbs", {"gamma": INF}, ["parameters.gamma", "finite"]),
    ("base_weight_nan", "linear", {"include_base": True, "base_weight": NAN}, ["base_weight", "finite"]),
    ("recall_scale_inf", "recall", {"variant": "task_vector", "scale": INF}, ["parameters.scale", "finite"]),
    ("recall_scale_huge", "recall", {"variant": "ties", "scale": 1e6}, ["parameters.scale", "1000"]),
    ("recall_temperature_inf", "recall", {"temperature": INF}, ["parameters.temperature", "finite"]),
    ("recall_temperature_underflows", "recall", {"temperature": 1e-300}, ["parameters.temperature", "at least 1e-6"]),
    ("recall_bandwidth_nan", "recall", {"bandwidth": NAN}, ["parameters.bandwidth", "finite"]),
    ("recall_bandwidth_inf", "recall", {"bandwidth": INF}, ["parameters.bandwidth", "finite"]),
    ("recall_bandwidth_underflows", "recall", {"bandwidth": 1e-200}, ["parameters.bandwidth", "1e-9"]),
    ("recall_density_nan", "recall", {"variant": "ties", "density": NAN}, ["parameters.density", "finite"]),
    ("recall_newest_share_nan", "recall", {"newest_share": NAN}, ["parameters.newest_share", "finite"]),
    ("svd_alpha_inf", "tsv_m", {"alpha": INF}, ["parameters.alpha", "finite"]),
]


@pytest.mark.parametrize(("method", "parameters", "fragments"), [case[1:] for case in PARAMETER_CASES],
                         ids=[case[0] for case in PARAMETER_CASES])
def test_non_finite_or_degenerate_parameters_are_refused_before_any_weight(
        method, parameters, fragments, tiny_models, tmp_path, capsys, no_weight_reads):
    config = _config(tiny_models, tmp_path, method)
    config["parameters"].update(parameters)
    _refused(capsys, _write(config, tmp_path), tmp_path, *fragments)


def test_well_formed_parameters_still_load(tiny_models, tmp_path):
    """The bounds refuse only what cannot work: the limits themselves, negative task-vector
    weights and large temperatures (uniform α) are fine."""
    for method, parameters in [
        ("task_arithmetic", {"lambda": -1000.0, "weights": [[1.0, -1.0], 1000.0]}),
        ("linear", {"weights": [1.0, -0.5]}),
        ("linear", {"weights": [1.0, -1.0], "normalize": False}),
        ("ties", {"density": [1.0, 0.01], "weights": [1.0, 0.0]}),
        ("recall", {"temperature": 1e9, "bandwidth": 1e-9, "scale": 1000.0, "num_typical": 3}),
    ]:
        config = _config(tiny_models, tmp_path, method)
        config["parameters"] = parameters
        load_config(config)


# ---------------------------------------------------------------------------- 2. YAML alias bombs
BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.parametrize("command", ["merge", "continual"])
def test_billion_laughs_is_refused_before_anything_is_built(command, tmp_path, capsys, monkeypatch):
    """9^9 "lol"s from a few hundred bytes: refused from the node graph, before PyYAML constructs
    a single Python object from it, with a short message (both loaders share read_yaml_mapping)."""
    constructed = []
    real = yaml.SafeLoader.construct_document
    monkeypatch.setattr(yaml.SafeLoader, "construct_document",
                        lambda self, node: constructed.append(node) or real(self, node))
    path = _write(BILLION_LAUGHS, tmp_path)
    stderr = _refused(capsys, path, tmp_path, "100,000 values", "aliases", command=command)
    assert constructed == []
    assert len(stderr) < 2000


def test_an_expanded_alias_is_quoted_only_as_an_excerpt(tiny_models, tmp_path, capsys):
    """An alias below the budget that lands in the wrong key: the error quotes a short excerpt,
    not the expanded value (which once made a 351 MB message)."""
    config = yaml.safe_dump(_config(tiny_models, tmp_path))
    defs = "".join(f"  {line}\n" for line in BILLION_LAUGHS.splitlines()[:4])  # 9^4 strings
    text = "x-defs:\n" + defs + "\n".join(line for line in config.splitlines()
                                           if not line.startswith(("models:", "- ")))
    text += "\nmodels: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
    stderr = _refused(capsys, _write(text, tmp_path), tmp_path, "models", "more error(s)")
    assert len(stderr) < 2000


def test_long_values_and_keys_are_quoted_as_excerpts(tiny_models, tmp_path, capsys):
    config = _config(tiny_models, tmp_path, dtype="f" * 300_000)
    config["k" * 300_000] = 1
    stderr = _refused(capsys, _write(config, tmp_path), tmp_path, "dtype", "unknown key")
    assert len(stderr) < 2000
    config = _config(tiny_models, tmp_path, device="d" * 10**7, seed=[list(range(10**6))] * 10**3,
                     method="m" * 10**7)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert all(key in caught.value.problem for key in ("device", "seed", "unknown merge method"))
    assert len(str(caught.value)) < 2000


@pytest.mark.parametrize(("text", "fragment"), [
    ("a: &a [1, *a]\n", "contains itself"),
    ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", "nests its values too deeply"),
], ids=["recursive", "deep"])
def test_recursive_or_deep_yaml_is_refused(text, fragment, tmp_path, capsys):
    _refused(capsys, _write(text, tmp_path), tmp_path, fragment)


def test_config_path_that_is_not_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "folder.yaml").mkdir()
    _refused(capsys, tmp_path / "folder.yaml", tmp_path, "is a folder")
    if Path("/dev/zero").exists():
        _refused(capsys, Path("/dev/zero"), tmp_path, "not a regular file")
    (tmp_path / "huge.yaml").write_text("# padding\n" * 200_000)
    _refused(capsys, tmp_path / "huge.yaml", tmp_path, "bytes")


# ------------------------------------------------------------------------------------- 3. seeds
@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**70])
def test_seed_out_of_range_is_refused(seed, tiny_models, tmp_path, capsys, no_weight_reads):
    config = _config(tiny_models, tmp_path, seed=seed)
    _refused(capsys, _write(config, tmp_path), tmp_path, "seed", str(MAX_SEED))


def test_seed_limits_are_accepted(tiny_models, tmp_path):
    assert load_config(_config(tiny_models, tmp_path, seed=MAX_SEED)).seed == MAX_SEED
    assert load_config(_config(tiny_models, tmp_path, seed=0)).seed == 0


# ----------------------------------------------------------------------------- 4. layer indices
@pytest.mark.parametrize(("cluster_layer", "fragments"), [
    (3, ["2 blocks", "-3 to 2"]), (99, ["2 blocks", "-3 to 2"]), (-4, ["2 blocks", "-3 to 2"]),
    (-10**30, ["greater than or equal to -100000"]),  # no model is that deep: refused at load
])
def test_cluster_layer_past_the_model_is_refused(cluster_layer, fragments, tiny_models, tmp_path, capsys,
                                                 no_weight_reads):
    config = _config(tiny_models, tmp_path, "recall")
    config["parameters"]["cluster_layer"] = cluster_layer
    _refused(capsys, _write(config, tmp_path), tmp_path, "cluster_layer", *fragments)


def test_cluster_layer_range_matches_the_hidden_states(tiny_models, tmp_path):
    """2 blocks: hidden states 0..2 (embeddings, block 0, block 1), so -3..2 are valid."""
    config = load_config(_config(tiny_models, tmp_path, "recall"))
    for layer in (-3, -1, 0, 2):
        parameters = parameters_model("recall").model_validate({"num_typical": 3, "cluster_layer": layer})
        RecallMethod(parameters, config, num_layers=2)
    parameters = parameters_model("recall").model_validate({"num_typical": 3, "cluster_layer": 3})
    with pytest.raises(ConfigError, match="cluster_layer"):
        RecallMethod(parameters, config, num_layers=2)


# ------------------------------------------------------------------------------------ 5. devices
def _unusable_devices() -> list[str]:
    """Device strings this machine cannot serve, built from what it has."""
    devices = ["tpu", "gpu", "cuda:-1", "zz##", "cpu cpu", "meta", ""]
    devices.append(f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda")
    if not torch.cuda.is_available():
        devices.append("cuda:7")
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        devices.append("mps")
    return devices


@pytest.mark.parametrize("method", ["recall", "ties"])
@pytest.mark.parametrize("device", _unusable_devices())
def test_device_the_machine_cannot_serve_is_refused(device, method, tiny_models, tmp_path, capsys,
                                                    no_weight_reads):
    config = _config(tiny_models, tmp_path, method, device=device)
    _refused(capsys, _write(config, tmp_path), tmp_path, "device", "device: cpu")


def test_gpu_index_is_checked_against_the_gpus_present(monkeypatch):
    """The CUDA branch on any machine: a pretend two-GPU machine takes cuda:1, refuses cuda:2."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1"
    assert check_device("CUDA") == "cuda"
    with pytest.raises(ConfigError, match="has 2 GPU") as caught:
        check_device("cuda:2")
    assert "cuda:0 to cuda:1" in caught.value.fix
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no usable CUDA"):
        check_device("cuda:0")


def test_usable_devices_are_accepted():
    assert check_device("cpu") == "cpu"
    assert check_device(" CPU ") == "cpu"
    if torch.cuda.is_available():
        assert check_device("cuda") == "cuda"
        assert check_device(f"cuda:{torch.cuda.device_count() - 1}").startswith("cuda")
    with pytest.raises(ConfigError, match="fix|device"):
        check_device(["cpu"])


# -------------------------------------------------------------------------------------- 6. sizes
BAD_SIZES = ["infGB", "nanMB", "1e400GB", "-1GB", "0MB", "0.1B", "2PB", "1e20GB", "huge", "12", "GB"]


@pytest.mark.parametrize("size", BAD_SIZES)
@pytest.mark.parametrize("key", ["shard_size", "block_size"])
def test_bad_size_is_refused_under_its_own_key(key, size, tiny_models, tmp_path, capsys, no_weight_reads):
    config = _config(tiny_models, tmp_path, **{key: size})
    stderr = _refused(capsys, _write(config, tmp_path), tmp_path, key, "500MB or 2GB")
    other = "block_size" if key == "shard_size" else "shard_size"
    assert other not in stderr


def test_good_sizes_parse():
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size(" 500 mb ") == 500 * 10**6
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("2e9B") == 2 * 10**9
    assert parse_size("1PB") == 10**15
    with pytest.raises(ConfigError, match="block_size"):
        parse_size("nanGB", "block_size")


# -------------------------------------------------------------------------------------- 7. paths
def _loop(tmp: Path) -> Path:
    os.symlink(tmp / "loop_a", tmp / "loop_b")
    os.symlink(tmp / "loop_b", tmp / "loop_a")
    return tmp / "loop_a"


@pytest.mark.parametrize("key", ["base", "models", "samples", "output"])
def test_symlink_loop_is_refused(key, tiny_models, tmp_path, capsys, no_weight_reads):
    loop = str(_loop(tmp_path))
    config = _config(tiny_models, tmp_path, "recall", **{key: [loop] if key == "models" else loop})
    _refused(capsys, _write(config, tmp_path), tmp_path, "loop of symbolic links")


@pytest.mark.parametrize("key", ["base", "models", "samples", "output"])
def test_path_with_nul_byte_is_refused(key, tiny_models, tmp_path, capsys, no_weight_reads):
    bad = str(tmp_path / "a\x00b")
    config = _config(tiny_models, tmp_path, "recall", **{key: [bad] if key == "models" else bad})
    _refused(capsys, _write(config, tmp_path), tmp_path, "NUL byte")


@pytest.mark.parametrize("path", ["x" * 300, "/".join(["y" * 200] * 25)], ids=["long-name", "long-path"])
@pytest.mark.parametrize("key", ["base", "models", "output"])
def test_path_too_long_is_refused(key, path, tiny_models, tmp_path, capsys, no_weight_reads):
    config = _config(tiny_models, tmp_path, **{key: [path] if key == "models" else path})
    stderr = _refused(capsys, _write(config, tmp_path), tmp_path, "too long", "shorter path")
    assert max(len(line) for line in stderr.splitlines()) < 400


def test_output_under_a_file_is_refused(tiny_models, tmp_path, capsys, no_weight_reads):
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("a user's file")
    config = _config(tiny_models, tmp_path, output=str(blocker / "sub" / "out"))
    _refused(capsys, _write(config, tmp_path), tmp_path, "blocker.txt", "is a file", "parent folders")
    assert blocker.read_text() == "a user's file"
    with pytest.raises(OutputError, match="is a file"):
        check_output_path(blocker / "out")
    with pytest.raises(OutputError, match="is a file"):
        check_output_path(blocker)
    check_output_path(tmp_path / "new" / "deeper" / "out")  # missing folders are created later


# ----------------------------------------------------------------------- 8. command-line paths
def test_relative_output_on_the_command_line_is_relative_to_the_current_directory(
        tiny_models, tmp_path, monkeypatch, capsys):
    configs, work = tmp_path / "configs", tmp_path / "work"
    configs.mkdir()
    work.mkdir()
    path = _write(_config(tiny_models, tmp_path, output="from_file"), configs)
    monkeypatch.chdir(work)
    assert cli_main(["merge", str(path), "--output", "from_cli", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert Path(summary["output"]) == (work / "from_cli").resolve()
    assert (work / "from_cli" / "recall_report.json").is_file()
    assert not (configs / "from_cli").exists()
    # a relative path written in the file stays relative to the file
    assert load_config(path).output == (configs / "from_file").resolve()
    assert load_config(path, {"output": "x"}).output == (work / "x").resolve()


# ------------------------------------------------------------------------------------ 9. samples
def _recall_with_samples(tiny, tmp: Path, samples: Path | str) -> dict:
    return _config(tiny, tmp, "recall", samples=str(samples))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_samples_from_a_device_are_refused(tiny_models, tmp_path, capsys, no_weight_reads):
    config = _recall_with_samples(tiny_models, tmp_path, "/dev/zero")
    _refused(capsys, _write(config, tmp_path), tmp_path, "/dev/zero", "not a regular file")


@needs_fifo
def test_samples_from_a_pipe_are_refused_without_opening_it(tiny_models, tmp_path, capsys, no_weight_reads):
    fifo = tmp_path / "samples.jsonl"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    _refused(capsys, _write(_recall_with_samples(tiny_models, tmp_path, fifo), tmp_path), tmp_path,
             "not a regular file")


def test_samples_folder_is_refused(tiny_models, tmp_path, capsys, no_weight_reads):
    (tmp_path / "samples_dir").mkdir()
    config = _recall_with_samples(tiny_models, tmp_path, tmp_path / "samples_dir")
    _refused(capsys, _write(config, tmp_path), tmp_path, "is a folder")


def test_too_many_samples_are_refused_with_the_cap(tiny_models, tmp_path, capsys, monkeypatch):
    from recall_merge.recall import method

    def forbidden(*args, **kwargs):
        raise AssertionError("the representation pass ran on a refused sample file")

    monkeypatch.setattr(method, "states_for_all_models", forbidden)
    path = tmp_path / "many.txt"
    path.write_text("sample\n" * (MAX_SAMPLES + 1))
    _refused(capsys, _write(_recall_with_samples(tiny_models, tmp_path, path), tmp_path), tmp_path,
             f"more than {MAX_SAMPLES:,} samples", f"use at most {MAX_SAMPLES:,} samples")


def test_line_too_long_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "long.txt"
    path.write_bytes(b"x" * (2 * MAX_LINE_BYTES))  # one line, no newline
    with pytest.raises(SampleError, match="longer than"):
        read_samples(path)


def test_streamed_reading_keeps_the_samples_and_their_order(tmp_path):
    txt = tmp_path / "s.txt"
    txt.write_bytes(b"one\r\ntwo\rthree\n\n  \nfour")
    assert read_samples(txt) == ["one", "two", "three", "four"]
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text('{"text": "a\u2028b"}\r\n\n{"text": "c"}\n', encoding="utf-8")
    assert read_samples(jsonl) == ["a\u2028b", "c"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(SampleError, match="line 2"):
        read_samples(bad)
    with pytest.raises(SampleError, match="num_typical"):
        read_samples(txt, min_count=5)
    with pytest.raises(SampleError, match="more than 3 samples"):
        read_samples(txt, max_count=3)
    assert len(read_samples(txt, max_count=None)) == 4
