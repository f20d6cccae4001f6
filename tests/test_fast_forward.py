"""The pure-torch forward and tokenizer against transformers, and the fallbacks to transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recall_merge.io.packaged import smollm2_folder
from recall_merge.recall.fast_forward import UnsupportedModel, hidden_states, spec_from_config

# Where setup.sh cached it, wherever $RECALL_MERGE_CACHE or HOME point (never a fixed path).
_SMOLLM2 = smollm2_folder()


def _tiny_model(folder: Path, family: str, **options):
    """A random tiny decoder of ``family`` saved to ``folder``; returns (model, config dict)."""
    import transformers

    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    settings = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                    num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                    rms_norm_eps=1e-5, tie_word_embeddings=False)
    settings.update(options)
    torch.manual_seed(0)
    model = model_class(config_class(**settings)).eval()
    with torch.no_grad():  # norms and biases start at 1 / 0: randomise so they are exercised
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(folder)
    return model, json.loads((folder / "config.json").read_text())


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 97, (3, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # right padding of different lengths
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = 0
    return input_ids, attention_mask


@pytest.mark.parametrize(("family", "options"), [
    ("llama", {}),  # GQA 6/2, untied
    ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 6}),  # tied, plain MHA
    ("llama", {"attention_bias": True, "mlp_bias": True, "head_dim": 12, "rope_theta": 1e5}),
    ("mistral", {"sliding_window": 64}),
    ("qwen2", {}),
])
@pytest.mark.parametrize("padded", [True, False])
def test_hidden_states_equal_transformers(family, options, padded, tmp_path):
    from safetensors.torch import load_file

    model, config = _tiny_model(tmp_path, family, **options)
    input_ids, attention_mask = _padded_batch()
    if not padded:
        attention_mask = torch.ones_like(attention_mask)
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                         use_cache=False).hidden_states
    weights = load_file(tmp_path / "model.safetensors")
    ours = hidden_states(weights, spec_from_config(config), input_ids, attention_mask)
    assert len(ours) == len(expected) == config["num_hidden_layers"] + 1
    real = attention_mask.bool()
    for index, (mine, theirs) in enumerate(zip(ours, expected, strict=True)):
        # Padded positions are excluded from pooling; their values depend on the kernel's handling
        # of masked rows, so only real tokens are compared.
        assert (mine[real] - theirs[real]).abs().max() <= 1e-5, index


@pytest.mark.parametrize("change", [
    {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"},
    {"hidden_act": "gelu"},
    {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
    {"rope_scaling": {"type": "linear", "factor": 2.0}},
    {"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}},
    {"quantization_config": {"quant_method": "bitsandbytes"}},
    {"partial_rotary_factor": 0.5},
])
def test_unsupported_configs_are_refused(change):
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 48,
              "num_attention_heads": 6, "num_key_value_heads": 2, "num_hidden_layers": 2}
    assert spec_from_config(config).rope_theta == 10_000.0  # transformers' default
    with pytest.raises(UnsupportedModel):
        spec_from_config({**config, **change})


# ------------------------------------------------------------------ the representation pass
def test_fast_path_gives_the_transformers_states(tiny_models, tiny_loras):
    """Base, a full expert and a LoRA expert: the pure-torch path equals the transformers path."""
    from recall_merge.io.pool import ModelPool
    from recall_merge.recall.representations import fast_decoder_spec, states_for_all_models

    pool = ModelPool.open(tiny_models["base"], [tiny_models["e1"], tiny_loras["l1"]])
    assert fast_decoder_spec(pool, 32) is not None
    texts = ["the cat sat on the mat", "book a table for two tonight please", "rain"]
    options = dict(max_length=32, batch_size=2, use_chat_template=True)
    fast = states_for_all_models(pool, texts, backend="fast", **options)
    slow = states_for_all_models(pool, texts, backend="transformers", **options)
    assert sorted(fast) == sorted(slow) == [0, 1, 2]
    for k in slow:
        assert fast[k].shape == slow[k].shape
        assert (fast[k] - slow[k]).abs().max() <= 1e-6, k


def test_unsupported_architecture_runs_on_transformers(tiny_models, tmp_path, monkeypatch):
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    import recall_merge.recall.representations as representations
    from recall_merge.io.pool import ModelPool

    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folder = tmp_path / f"gpt2_{seed}"
        GPT2LMHeadModel(GPT2Config(vocab_size=400, n_positions=64, n_embd=32, n_layer=2, n_head=2)
                        ).save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (tiny_models["base"] / name).exists():
                shutil.copy(tiny_models["base"] / name, folder)
        folders.append(folder)
    pool = ModelPool.open(folders[0], [folders[1]])
    assert representations.fast_decoder_spec(pool, 32) is None

    def refuse(*args, **kwargs):
        raise AssertionError("the pure-torch forward ran on GPT-2")

    monkeypatch.setattr(representations, "hidden_states", refuse)
    states = representations.states_for_all_models(pool, ["the cat sat", "rain is expected"], max_length=32,
                                                   batch_size=2, use_chat_template=True)
    assert states[0].shape == (3, 2, 32) and not torch.equal(states[0], states[1])


# ------------------------------------------------------------------------------ tokenizer
_TEXTS = ["the cat sat on the mat", "Héllo wörld — 日本語\ttabs\nand newlines  ", " leading space",
          "a <|im_end|> inside", "<|im_start|>user\nhi", "x" * 700, "stocks fell sharply on monday"]


def _assert_same_ids(folder: Path) -> None:
    from recall_merge.recall.fast_tokenizer import load_fast_tokenizer
    from recall_merge.recall.representations import encode, format_texts, load_tokenizer

    fast, reference = load_fast_tokenizer(folder), load_tokenizer(folder)
    assert fast is not None
    for use_chat_template in (True, False):
        framed = format_texts(fast, _TEXTS, use_chat_template)
        assert framed == format_texts(reference, _TEXTS, use_chat_template)
        for max_length in (512, 9):  # 9 truncates every chat-framed text
            ours = fast(framed, max_length=max_length)
            theirs = reference(framed, return_tensors="pt", padding=True, truncation=True,
                               max_length=max_length, add_special_tokens=False)
            assert torch.equal(ours["input_ids"], theirs["input_ids"])
            assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
            for side in ("left", "right"):  # and through encode, which sets the side on both
                ours = encode(fast, framed, max_length=max_length, truncation_side=side)
                theirs = encode(reference, framed, max_length=max_length, truncation_side=side)
                assert torch.equal(ours["input_ids"], theirs["input_ids"]), side
                assert torch.equal(ours["attention_mask"], theirs["attention_mask"]), side
            assert fast.truncation_side == reference.truncation_side == "right"  # restored


def test_tokenizer_equals_autotokenizer_on_the_tiny_tokenizer(tiny_models):
    _assert_same_ids(tiny_models["base"])


@pytest.mark.skipif(not (_SMOLLM2 / "tokenizer.json").exists(), reason="SmolLM2 not cached: run `recall cache smollm2`")
def test_tokenizer_equals_autotokenizer_on_smollm2():
    _assert_same_ids(_SMOLLM2)


@pytest.mark.parametrize("change", ["special_tokens_map", "unknown_option", "llama_class", "new_special",
                                    "named_templates"])
def test_tokenizer_falls_back_when_transformers_would_differ(change, tiny_models, tmp_path):
    import shutil

    from recall_merge.recall.fast_tokenizer import load_fast_tokenizer

    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_models["base"] / name).exists():
            shutil.copy(tiny_models["base"] / name, folder)
    assert load_fast_tokenizer(folder) is not None
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if change == "special_tokens_map":
        (folder / "special_tokens_map.json").write_text("{}")
    elif change == "unknown_option":
        config["do_lower_case"] = True
    elif change == "llama_class":
        config["tokenizer_class"] = "LlamaTokenizer"
    elif change == "new_special":
        config["mask_token"] = "<mask>"  # not in tokenizer.json: transformers would add it
    else:
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        config["chat_template"] = [{"name": "default", "template": "{{ messages }}"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_fast_tokenizer(folder) is None


def test_chat_template_helpers_render_as_in_transformers(tiny_models):
    """raise_exception, namespace, tojson and loop controls behave as in transformers' sandbox."""
    import jinja2

    from recall_merge.recall.fast_tokenizer import compile_chat_template

    template = compile_chat_template(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% set ns.n = ns.n + 1 %}{{ m | tojson }}{% endfor %}{{ ns.n }}{{ bos_token }}")
    messages = [{"role": "user", "content": "<b>é</b>"}] * 3
    assert template.render(messages=messages, bos_token="<s>") == (
        '{"role": "user", "content": "<b>é</b>"}' * 2 + "2<s>")
    with pytest.raises(jinja2.exceptions.TemplateError, match="no system"):
        compile_chat_template("{{ raise_exception('no system') }}").render(messages=[])


# ------------------------------------------------------------------------ checkpoint reader
def test_mapped_tensors_equal_read_tensors_and_leave_the_file_alone(tiny_models):
    from recall_merge.io.reader import Checkpoint

    checkpoint = Checkpoint(tiny_models["e1"])
    before = (tiny_models["e1"] / "model.safetensors").read_bytes()
    mapped = checkpoint.get_mapped(list(checkpoint.tensors))
    assert mapped.keys() == checkpoint.tensors.keys()
    for name, tensor in mapped.items():
        assert torch.equal(tensor, checkpoint.get(name)), name
    mapped["model.norm.weight"].add_(1.0)  # a careless write stays in this process
    assert not torch.equal(mapped["model.norm.weight"], checkpoint.get("model.norm.weight"))
    assert (tiny_models["e1"] / "model.safetensors").read_bytes() == before
