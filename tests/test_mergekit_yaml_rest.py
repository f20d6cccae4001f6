"""The rest of mergekit's YAML against mergekit 0.1.5 run in-process, on tiny random Llama models:
``slices`` (frankenmerges with passthrough, merges over aligned layer ranges), filtered parameters,
``tokenizer_source`` (with tiny tokenizers of different vocabularies) and ``chat_template``, and
``dtype`` as the precision the merge computes in. Unknown keys are refused through the CLI.

Each case is a mergekit config merged by mergekit (``run_mergekit`` of test_classic_vs_mergekit)
and by recall-merge through ``from_mergekit``. Tensors agree within 1e-5 in float32 and to the
bit at float16/bfloat16 (the merge computes in that dtype, as mergekit does). A union vocabulary
is compared token by token: mergekit numbers the new tokens in hash-map order, which changes from
run to run (recall-merge in id order), so the tokens and each token's rows are compared, and the
base's tokens keep their ids in both.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

mergekit = pytest.importorskip("mergekit")
from test_classic_vs_mergekit import TOLERANCE, max_difference, read_tensors, run_mergekit  # noqa: E402

from recall_merge import merge  # noqa: E402
from recall_merge.cli import main as cli_main  # noqa: E402
from recall_merge.errors import ConfigError  # noqa: E402
from recall_merge.interop.mergekit import evaluate_setting, from_mergekit  # noqa: E402
from recall_merge.testing import make_tiny_llama, tiny_llama_config  # noqa: E402

LAYERS = 4
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE_A = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
TEMPLATE_B = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


# ------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """One tokenizer, 4 blocks: base, two experts (base + noise), a 3-block model of the same width."""
    root = tmp_path_factory.mktemp("rest")
    base = make_tiny_llama(root / "base", seed=0, num_layers=LAYERS, hidden=32)
    made = {"base": base}
    for k in (1, 2):
        made[f"e{k}"] = make_tiny_llama(root / f"e{k}", seed=10 + k, num_layers=LAYERS, hidden=32,
                                        tokenizer_from=base, perturb_from=base)
    made["short"] = make_tiny_llama(root / "short", seed=5, num_layers=3, hidden=32, tokenizer_from=base)
    return {key: str(value) for key, value in made.items()}


def make_tokenizer(folder: Path, corpus: list[str], size: int, template: str,
                   added: tuple[str, ...] = ()) -> Path:
    """A tiny byte-level BPE trained on ``corpus`` (different corpora: different vocabularies)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as bpe_models
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(bpe_models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus * 4, trainer=trainers.BpeTrainer(
        vocab_size=size, special_tokens=SPECIALS, initial_alphabet=[]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=SPECIALS[1], eos_token=SPECIALS[2],
                                   pad_token=SPECIALS[0])
    if added:
        fast.add_tokens(list(added), special_tokens=True)
    fast.chat_template = template
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vocab_models(tmp_path_factory) -> dict[str, str]:
    """Models with different small vocabularies: base and e2 share tokenizer A, e1 has tokenizer
    B (other words, one added special token); ``padded`` has A with 3 embedding rows past it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("vocab")
    tok_a = make_tokenizer(root / "tok_a", ["the cat sat on the mat", "a dog ran in the park"], 60, TEMPLATE_A)
    tok_b = make_tokenizer(root / "tok_b", ["stocks fell sharply on monday", "the team won the final"], 70,
                           TEMPLATE_B, added=("<tool>",))
    made = {"base": make_tiny_llama(root / "base", seed=0, num_layers=2, hidden=32, tokenizer_from=tok_a)}
    made["e1"] = make_tiny_llama(root / "e1", seed=1, num_layers=2, hidden=32, tokenizer_from=tok_b)
    made["e2"] = make_tiny_llama(root / "e2", seed=2, num_layers=2, hidden=32, tokenizer_from=tok_a,
                                 perturb_from=made["base"])
    padded = root / "padded"
    tokenizer = AutoTokenizer.from_pretrained(tok_a)
    torch.manual_seed(3)
    LlamaForCausalLM(LlamaConfig(**tiny_llama_config(len(tokenizer) + 3, 2, 32))).save_pretrained(padded)
    tokenizer.save_pretrained(padded)
    made["padded"] = padded
    return {key: str(value) for key, value in made.items()}


# ------------------------------------------------------------------------------ helpers
def ours(config: dict[str, Any], out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    result = merge({**from_mergekit(copy.deepcopy(config)), "output": str(out)}, overwrite=True, quiet=True)
    return read_tensors(result.output), result.report


def vocab(folder: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).get_vocab()


def vocabulary_difference(ours_dir: Path, theirs_dir: Path) -> float:
    """Max |Δ| between two merges whose vocabularies are the same tokens, possibly numbered
    differently: vocabulary tensors are compared row by row for the same token."""
    ours_vocab, theirs_vocab = vocab(ours_dir), vocab(theirs_dir)
    assert set(ours_vocab) == set(theirs_vocab)
    tokens = sorted(ours_vocab)
    ours_rows = torch.tensor([ours_vocab[token] for token in tokens])
    theirs_rows = torch.tensor([theirs_vocab[token] for token in tokens])
    mine, theirs = read_tensors(ours_dir), read_tensors(theirs_dir)
    assert set(mine) == set(theirs)
    difference = 0.0
    for name, tensor in mine.items():
        other = theirs[name]
        assert tensor.shape == other.shape, name
        if "embed" in name or "lm_head" in name:  # token rows by token, then the padding rows
            tensor = torch.cat([tensor[ours_rows], tensor[len(tokens):]])
            other = torch.cat([other[theirs_rows], other[len(tokens):]])
        difference = max(difference, (tensor.float() - other.float()).abs().max().item())
    for name in ("config.json",):
        ours_config, theirs_config = (json.loads((folder / name).read_text()) for folder in (ours_dir, theirs_dir))
        assert ours_config["vocab_size"] == theirs_config["vocab_size"]
    return difference


def relative_difference(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    assert set(mine) == set(theirs)
    for name in mine:
        assert mine[name].dtype == theirs[name].dtype, name
    return max(((mine[n].float() - theirs[n].float()).abs().max() / theirs[n].float().abs().max().clamp_min(1e-12)).item()
               for n in mine)


# ------------------------------------------------------------------------------ slices
def test_frankenmerge_matches_mergekit(models, tmp_path) -> None:
    """passthrough over stacked slices: blocks 0-2 of the base then 1-3 of an expert, renumbered
    0-5; the embedding from the first slice's model, the final norm and head from the last's."""
    config = {"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": models["base"], "layer_range": [0, 3]}]},
        {"sources": [{"model": models["e1"], "layer_range": [1, 4]}]}]}
    theirs = run_mergekit(config, tmp_path / "mergekit")
    mine, report = ours(config, tmp_path / "ours")
    assert max_difference(mine, theirs) == 0.0
    expert = read_tensors(Path(models["e1"]))
    assert torch.equal(mine["model.layers.3.self_attn.q_proj.weight"], expert["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(mine["lm_head.weight"], expert["lm_head.weight"])
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["num_hidden_layers"] == 6
    assert report["method"] == "passthrough" and report["num_layers"] == 6

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    assert len(model.model.layers) == 6
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def _slerp_canonical(m: dict[str, str]) -> dict[str, Any]:
    # mergekit's README slerp example: per-sublayer gradients of t, 0.5 elsewhere
    return {"merge_method": "slerp", "base_model": m["base"], "dtype": "float32",
            "slices": [{"sources": [{"model": m["base"], "layer_range": [0, LAYERS]},
                                    {"model": m["e1"], "layer_range": [0, LAYERS]}]}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                 {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]}}


SLICE_CASES = {
    "slerp_canonical": _slerp_canonical,
    "linear_two_slices_own_parameters": lambda m: {
        "merge_method": "linear", "dtype": "float32", "slices": [
            {"sources": [{"model": m["e1"], "layer_range": [0, 2], "parameters": {"weight": 0.3}},
                         {"model": m["e2"], "layer_range": [2, 4], "parameters": {"weight": [0.5, 1.5]}}]},
            {"sources": [{"model": m["e2"], "layer_range": [0, 3], "parameters": {"weight": 1.0}},
                         {"model": m["short"], "layer_range": [0, 3], "parameters": {"weight": 2.0}}],
             "parameters": {"normalize": False}}]},
    "task_arithmetic_slice_base_and_parameters": lambda m: {
        "merge_method": "task_arithmetic", "base_model": m["base"], "dtype": "float32",
        "parameters": {"lambda": 0.9, "weight": 0.5}, "slices": [
            {"sources": [{"model": m["base"], "layer_range": [0, 2]}, {"model": m["e1"], "layer_range": [0, 2]},
                         {"model": m["e2"], "layer_range": [0, 2], "parameters": {"weight": 0.25}}]},
            {"sources": [{"model": m["e2"], "layer_range": [2, 4]}, {"model": m["e1"], "layer_range": [2, 4]}],
             "base_model": m["e2"], "parameters": {"lambda": 0.5}}]},
}


@pytest.mark.parametrize("case", sorted(SLICE_CASES))
def test_slices_with_a_merge_method_match_mergekit(models, tmp_path, case) -> None:
    config = SLICE_CASES[case](models)
    theirs = run_mergekit(config, tmp_path / "mergekit")
    mine, _ = ours(config, tmp_path / "ours")
    assert max_difference(mine, theirs) <= TOLERANCE


# ------------------------------------------------------------------------------ filters
FILTER_CASES = {
    "task_arithmetic_global_and_model_filters": lambda m: {
        "merge_method": "task_arithmetic", "base_model": m["base"], "dtype": "float32",
        "parameters": {"lambda": 0.8, "weight": [{"filter": "self_attn", "value": 0.3}, {"value": 0.5}]},
        "models": [{"model": m["e1"]},
                   # no catch-all: tensors it does not match fall through to the global weight
                   {"model": m["e2"], "parameters": {"weight": [{"filter": "mlp", "value": [0.1, 0.9]}]}}]},
    "ties_filtered_density_and_switch": lambda m: {
        "merge_method": "ties", "base_model": m["base"], "dtype": "float32",
        "parameters": {"normalize": [{"filter": "layernorm", "value": False}, {"value": True}]},
        "models": [{"model": m["e1"], "parameters": {"weight": 1.0, "density": [
            {"filter": "q_proj", "value": 0.2}, {"filter": "*", "value": 0.6}]}},
                   {"model": m["e2"], "parameters": {"weight": 0.5, "density": 0.4}}]},
    "passthrough_scale_matches_input_names": lambda m: {
        # a per-model filter is matched against the input tensor's name (blocks 2-3 here, written
        # as blocks 0-1), a shared one against the output's
        "merge_method": "passthrough", "dtype": "float32", "slices": [
            {"sources": [{"model": m["e1"], "layer_range": [2, 4], "parameters": {
                "scale": [{"filter": "layers.3.", "value": 0.5}, {"value": 2.0}]}}]},
            {"sources": [{"model": m["base"], "layer_range": [0, 1]}]}]},
}


@pytest.mark.parametrize("case", sorted(FILTER_CASES))
def test_filtered_parameters_match_mergekit(models, tmp_path, case) -> None:
    config = FILTER_CASES[case](models)
    theirs = run_mergekit(config, tmp_path / "mergekit")
    mine, report = ours(config, tmp_path / "ours")
    assert max_difference(mine, theirs) <= TOLERANCE
    assert len(report["mergekit_plan"]["merges"]) > 1  # the filters did resolve differently per tensor


def test_row_blocks_and_shards_give_the_same_tensors(models, tmp_path) -> None:
    """Elementwise merges of large tensors go in row blocks, and the output in several shards:
    the tensors are the same as mergekit's."""
    config = FILTER_CASES["task_arithmetic_global_and_model_filters"](models)
    theirs = run_mergekit(config, tmp_path / "mergekit")
    result = merge({**from_mergekit(copy.deepcopy(config)), "output": str(tmp_path / "ours"),
                    "block_size": "2KB", "shard_size": "40KB"}, quiet=True)
    assert len(result.report["output_files"]) > 1
    assert max_difference(read_tensors(result.output), theirs) <= TOLERANCE


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["model.layers.3.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight", ""]),
    t=st.floats(0, 1),
    setting=st.one_of(
        st.floats(-2, 2), st.lists(st.floats(-2, 2), min_size=1, max_size=5),
        st.lists(st.fixed_dictionaries(
            {"value": st.one_of(st.floats(-2, 2), st.lists(st.floats(-2, 2), min_size=1, max_size=4))},
            optional={"filter": st.sampled_from(["self_attn", "q_proj", "norm", "layers.3.", "*", "mlp"])}),
            min_size=1, max_size=4)),
)
def test_evaluate_setting_is_mergekits(name, t, setting) -> None:
    """Filters, gradients and precedence inside one setting resolve as mergekit's own function."""
    from mergekit.config import ConditionalParameter
    from mergekit.config import evaluate_setting as theirs

    mergekit_setting = ([ConditionalParameter(**entry) for entry in setting]
                        if isinstance(setting, list) and setting and isinstance(setting[0], dict) else setting)
    expected = theirs(name, mergekit_setting, t, validate=float)
    assert evaluate_setting(name, setting, t, float) == expected


# ------------------------------------------------------------------------------ dtype
DTYPE_CASES = {
    "ties": lambda m: {"merge_method": "ties", "base_model": m["base"], "models": [
        {"model": m["e1"], "parameters": {"weight": 1.0, "density": 0.3}},
        {"model": m["e2"], "parameters": {"weight": 0.7, "density": 0.5}}]},
    "task_arithmetic": lambda m: {"merge_method": "task_arithmetic", "base_model": m["base"],
                                  "parameters": {"lambda": 0.9}, "models": [
        {"model": m["e1"], "parameters": {"weight": 0.3}}, {"model": m["e2"], "parameters": {"weight": 0.7}}]},
    "breadcrumbs_ties": lambda m: {"merge_method": "breadcrumbs_ties", "base_model": m["base"], "models": [
        {"model": m["e1"], "parameters": {"weight": 0.3, "density": 0.7, "gamma": 0.05}},
        {"model": m["e2"], "parameters": {"weight": 0.7, "density": 0.6}}]},
    "slerp": lambda m: {"merge_method": "slerp", "base_model": m["base"], "parameters": {"t": [0.1, 0.9]},
                        "models": [{"model": m["base"]}, {"model": m["e1"]}]},
    "multislerp": lambda m: {"merge_method": "multislerp", "models": [
        {"model": m["base"], "parameters": {"weight": 1.0}}, {"model": m["e1"], "parameters": {"weight": 0.3}},
        {"model": m["e2"], "parameters": {"weight": 0.7}}]},
    # weights whose float32 sum is exact: linear's divisor is then mergekit's to the bit (docs/methods.md)
    "linear": lambda m: {"merge_method": "linear", "models": [
        {"model": m["e1"], "parameters": {"weight": 0.5}}, {"model": m["e2"], "parameters": {"weight": 0.75}},
        {"model": m["base"], "parameters": {"weight": 0.25}}]},
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", sorted(DTYPE_CASES))
def test_dtype_is_the_compute_precision(models, tmp_path, case, dtype) -> None:
    config = {**DTYPE_CASES[case](models), "dtype": dtype}
    theirs = run_mergekit(config, tmp_path / "mergekit")
    mine, report = ours(config, tmp_path / "ours")
    assert relative_difference(mine, theirs) <= 1e-5
    assert report["mergekit_plan"]["compute_dtype"] == dtype


def test_computing_in_float32_would_differ(models, tmp_path) -> None:
    """Why dtype is the compute precision: the same TIES computed in float32 and only written in
    float16 (out_dtype) is not mergekit's float16 merge."""
    config = {**DTYPE_CASES["ties"](models), "dtype": "float16"}
    theirs = run_mergekit(config, tmp_path / "mergekit")
    in_float32, _ = ours({**config, "dtype": "float32", "out_dtype": "float16"}, tmp_path / "f32")
    assert max_difference(in_float32, theirs) > 1e-3


def test_out_dtype_is_the_written_dtype(models, tmp_path) -> None:
    config = {**DTYPE_CASES["task_arithmetic"](models), "dtype": "bfloat16", "out_dtype": "float32"}
    theirs = run_mergekit(config, tmp_path / "mergekit")
    mine, _ = ours(config, tmp_path / "ours")
    assert relative_difference(mine, theirs) == 0.0
    assert all(tensor.dtype == torch.float32 for tensor in mine.values())
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written.get("torch_dtype", written.get("dtype")) == "float32"


# ------------------------------------------------------------------------------ tokenizer
TOKENIZER_CASES = {
    "union_task_arithmetic": lambda m: {
        "merge_method": "task_arithmetic", "base_model": m["base"], "tokenizer_source": "union",
        "models": [{"model": m["e1"], "parameters": {"weight": 0.5}}, {"model": m["e2"], "parameters": {"weight": 0.7}}]},
    "union_linear_without_base": lambda m: {
        "merge_method": "linear", "tokenizer_source": "union",
        "models": [{"model": m["e1"], "parameters": {"weight": 0.5}}, {"model": m["e2"], "parameters": {"weight": 0.75}},
                   {"model": m["base"], "parameters": {"weight": 0.25}}]},
    "base_ties": lambda m: {
        "merge_method": "ties", "base_model": m["base"], "tokenizer_source": "base",
        "models": [{"model": m["e1"], "parameters": {"weight": 1.0, "density": 0.5}},
                   {"model": m["e2"], "parameters": {"weight": 0.5, "density": 0.5}}]},
    "model_source": lambda m: {
        "merge_method": "task_arithmetic", "base_model": m["base"], "tokenizer_source": m["e1"],
        "models": [{"model": m["e1"], "parameters": {"weight": 0.5}}, {"model": m["e2"], "parameters": {"weight": 0.5}}]},
    "base_strips_padding_rows": lambda m: {
        "merge_method": "task_arithmetic", "base_model": m["padded"], "tokenizer_source": "base",
        "models": [{"model": m["padded"]}, {"model": m["e1"], "parameters": {"weight": 0.5}}]},
    "union_pad_to_multiple_of": lambda m: {
        "merge_method": "task_arithmetic", "base_model": m["base"],
        "tokenizer": {"source": "union", "pad_to_multiple_of": 32},
        "models": [{"model": m["e1"], "parameters": {"weight": 0.5}}]},
    "union_frankenmerge": lambda m: {
        "merge_method": "passthrough", "base_model": m["base"], "tokenizer_source": "union", "slices": [
            {"sources": [{"model": m["e1"], "layer_range": [0, 1]}]},
            {"sources": [{"model": m["base"], "layer_range": [1, 2]}]}]},
}


@pytest.mark.parametrize("case", sorted(TOKENIZER_CASES))
def test_tokenizer_source_matches_mergekit(vocab_models, tmp_path, case) -> None:
    config = {**TOKENIZER_CASES[case](vocab_models), "dtype": "float32"}
    run_mergekit(config, tmp_path / "mergekit")
    _, report = ours(config, tmp_path / "ours")
    assert vocabulary_difference(tmp_path / "ours", tmp_path / "mergekit") <= TOLERANCE
    ours_vocab, theirs_vocab = vocab(tmp_path / "ours"), vocab(tmp_path / "mergekit")
    base_vocab = vocab(Path(vocab_models["base"]))
    if "union" in case:
        assert "<tool>" in ours_vocab and len(ours_vocab) > len(base_vocab)
        if "base_model" in config:  # the base's tokens keep their ids; the others' are appended
            # (without one, mergekit starts from a model picked in set order, here the first listed)
            assert all(ours_vocab[token] == theirs_vocab[token] == index for token, index in base_vocab.items())
    else:
        assert ours_vocab == theirs_vocab
    assert report["mergekit_plan"]["tokenizer"]["vocab_size"] == len(ours_vocab)


def test_tokenizer_of_a_model_outside_the_merge(vocab_models, tmp_path) -> None:
    """tokenizer_source naming a model that is not merged, written relative to the YAML file: its
    vocabulary is the output's; tokens no merged model has get zero rows, with a warning."""
    m = vocab_models
    config = {"merge_method": "task_arithmetic", "base_model": m["base"], "dtype": "float32",
              "tokenizer_source": m["e1"], "models": [{"model": m["e2"], "parameters": {"weight": 0.5}}]}
    run_mergekit(config, tmp_path / "mergekit")
    folder = Path(m["base"]).parent
    relative = {**config, "base_model": "base", "tokenizer_source": "e1", "models": [
        {"model": "e2", "parameters": {"weight": 0.5}}], "output": str(tmp_path / "ours")}
    path = folder / f"outside_{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump(relative))
    with pytest.warns(UserWarning, match="in none of the merged models"):
        assert cli_main(["merge", str(path), "--quiet"]) == 0
    assert vocabulary_difference(tmp_path / "ours", tmp_path / "mergekit") <= TOLERANCE
    assert vocab(tmp_path / "ours") == vocab(Path(m["e1"]))


def test_tokens_a_model_lacks_get_mergekits_rows(vocab_models, tmp_path) -> None:
    """Union of base (A) and e1 (B) in task arithmetic: a token only e1 has takes e1's row in every
    model (so the merge keeps it), a token both have keeps each model's own row, and the base's
    rows win for the base's tokens e1 lacks."""
    m = vocab_models
    config = {**TOKENIZER_CASES["union_task_arithmetic"](m), "dtype": "float32"}
    mine, _ = ours(config, tmp_path / "ours")
    merged_vocab, e1_vocab, base_vocab = vocab(tmp_path / "ours"), vocab(Path(m["e1"])), vocab(Path(m["base"]))
    e1 = read_tensors(Path(m["e1"]))["model.embed_tokens.weight"]
    base = read_tensors(Path(m["base"]))["model.embed_tokens.weight"]
    only_e1 = next(token for token in e1_vocab if token not in base_vocab)
    assert torch.equal(mine["model.embed_tokens.weight"][merged_vocab[only_e1]], e1[e1_vocab[only_e1]])
    only_base = next(token for token in base_vocab if token not in e1_vocab)
    e2 = read_tensors(Path(m["e2"]))["model.embed_tokens.weight"]
    # e1 lacks it: e1's row is the base's, so τ_e1 = 0 there and only e2's weighted delta remains
    expected = base[base_vocab[only_base]] + 0.7 * (e2[base_vocab[only_base]] - base[base_vocab[only_base]])
    assert torch.allclose(mine["model.embed_tokens.weight"][merged_vocab[only_base]], expected, atol=1e-6)


def test_union_vocabulary_is_reproducible(vocab_models) -> None:
    from recall_merge.io.tokenizer_merge import TokenizerInput, build_vocabulary, config_vocab_size

    def inputs(key: str, index: int) -> TokenizerInput:
        folder = Path(vocab_models[key])
        return TokenizerInput(index, folder, config_vocab_size(json.loads((folder / "config.json").read_text())))

    built = [build_vocabulary("union", inputs("base", 0), [inputs("e1", 1), inputs("e2", 2)]) for _ in range(2)]
    assert built[0].vocab == built[1].vocab
    assert all(torch.equal(built[0].permutations[k], built[1].permutations[k]) for k in (0, 1, 2))


@pytest.mark.parametrize("template", ["chatml", "auto", TEMPLATE_B])
def test_chat_template_written_as_mergekit_writes_it(vocab_models, tmp_path, template) -> None:
    """A named template (mergekit's file), auto (the most common among the models' templates), or a
    literal Jinja template: the output's tokenizer files are mergekit's byte for byte."""
    m = vocab_models
    config = {"merge_method": "task_arithmetic", "base_model": m["base"], "dtype": "float32",
              "chat_template": template, "models": [{"model": m["e2"], "parameters": {"weight": 0.5}}]}
    run_mergekit(config, tmp_path / "mergekit", copy_tokenizer=True)
    ours(config, tmp_path / "ours")
    names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
    for name in names:
        theirs_file, ours_file = tmp_path / "mergekit" / name, tmp_path / "ours" / name
        assert theirs_file.exists() == ours_file.exists(), name
        if theirs_file.exists():
            assert ours_file.read_bytes() == theirs_file.read_bytes(), name
    from transformers import AutoTokenizer

    written = AutoTokenizer.from_pretrained(tmp_path / "ours").chat_template
    expected = {"auto": TEMPLATE_A, TEMPLATE_B: TEMPLATE_B}.get(template)
    if expected is None:  # mergekit's chatml file
        assert "<|im_start|>" in written and written != TEMPLATE_A
    else:
        assert written.strip() == expected.strip()


# ------------------------------------------------------------------------------ refusals
REFUSED = [
    ("modules", {"merge_method": "linear", "modules": {"text": {}}}, "modules"),
    ("unknown_key", {"merge_method": "linear", "models": [{"model": "{e1}"}], "merge_options": {}}, "merge_options"),
    ("residual_weight", {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": "{e1}", "layer_range": [0, 2]}], "residual_weight": 0.5}]}, "residual_weight"),
    ("tokenizer_tokens", {"merge_method": "linear", "models": [{"model": "{e1}", "parameters": {"weight": 1}}],
                          "tokenizer": {"source": "union", "tokens": {"<x>": {"source": "{e1}"}}}}, "tokens"),
    ("unread_parameter", {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": "{e1}", "layer_range": [0, 2], "parameters": {"weight": 0.5}}]}]}, "weight"),
    ("bad_filter_entry", {"merge_method": "task_arithmetic", "base_model": "{base}", "models": [
        {"model": "{e1}", "parameters": {"weight": [{"filter": "mlp", "valu": 1.0}]}}]}, "filter"),
    ("passthrough_two_sources", {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": "{e1}", "layer_range": [0, 2]}, {"model": "{e2}", "layer_range": [0, 2]}]}]},
     "exactly 1 input"),
    ("unequal_ranges", {"merge_method": "linear", "slices": [
        {"sources": [{"model": "{e1}", "layer_range": [0, 2]}, {"model": "{e2}", "layer_range": [0, 3]}]}]},
     "different numbers of blocks"),
    ("base_not_in_slice", {"merge_method": "ties", "base_model": "{base}", "slices": [
        {"sources": [{"model": "{e1}", "layer_range": [0, 2]}]}]}, "not among its sources"),
    ("bad_layer_range", {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": "{e1}", "layer_range": [3, 1]}]}]}, "layer_range"),
    ("past_the_last_block", {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": "{e1}", "layer_range": [2, 9]}]}]}, "which has 4"),
    ("bad_chat_template", {"merge_method": "linear", "models": [{"model": "{e1}", "parameters": {"weight": 1}}],
                           "chat_template": "no such thing"}, "chat_template"),
    ("bad_dtype", {"merge_method": "linear", "models": [{"model": "{e1}", "parameters": {"weight": 1}}],
                   "dtype": "float8"}, "float8"),
]


@pytest.mark.parametrize(("label", "raw", "needle"), REFUSED, ids=[case[0] for case in REFUSED])
def test_unimplemented_or_bad_keys_exit_2_with_a_fix(models, tmp_path, capsys, label, raw, needle) -> None:
    text = yaml.safe_dump({**raw, "output": str(tmp_path / "out")})
    for key, path in models.items():
        text = text.replace("{" + key + "}", path)
    config = tmp_path / "mergekit.yaml"
    config.write_text(text)
    assert cli_main(["merge", str(config), "--quiet"]) == 2
    stderr = capsys.readouterr().err
    assert needle in stderr and "fix:" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_from_mergekit_keeps_the_plan_and_refuses_conflicts() -> None:
    plan = from_mergekit({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": "/a", "layer_range": [0, 2]}]}, {"sources": [{"model": "/a", "layer_range": [1, 3]}]}]})
    assert plan["base"] == "/a" and plan["models"] == ["/a"] and plan["mergekit"]["merge_method"] == "passthrough"
    assert [piece["sources"][0]["layer_range"] for piece in plan["mergekit"]["slices"]] == [[0, 2], [1, 3]]
    with pytest.raises(ConfigError, match="both"):
        from_mergekit({"merge_method": "linear", "models": [{"model": "/a"}],
                       "slices": [{"sources": [{"model": "/a", "layer_range": [0, 1]}]}]})
    with pytest.raises(ConfigError, match="both"):
        from_mergekit({"merge_method": "linear", "models": [{"model": "/a"}], "tokenizer_source": "base",
                       "tokenizer": {"source": "union"}})


def test_emitted_mergekit_yaml_of_a_planned_merge_is_the_same_merge(models, tmp_path) -> None:
    config = _slerp_canonical(models)
    emitted = tmp_path / "emitted.yaml"
    merge({**from_mergekit(copy.deepcopy(config)), "output": str(tmp_path / "ours")}, quiet=True,
          emit_mergekit=emitted)
    again = yaml.safe_load(emitted.read_text())
    assert from_mergekit(again)["mergekit"] == from_mergekit(copy.deepcopy(config))["mergekit"]
    assert max_difference(read_tensors(tmp_path / "ours"), run_mergekit(again, tmp_path / "mergekit")) <= TOLERANCE
