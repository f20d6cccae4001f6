"""A minimal pure-torch forward of Llama-family decoders, for hidden states only.

The representation pass needs each block's output, nothing else: no logits, no cache, no
generation. Building a transformers model costs seconds of imports and a full weight copy per
expert; this forward reads its weights from a plain ``name -> tensor`` dict under the
checkpoint's own tensor names, so an expert is just the dict of its safetensors and a LoRA
expert is the base dict with the adapted tensors replaced.

It follows transformers' Llama / Mistral / Qwen2 code op for op (RMSNorm in float32, RoPE
``cos``/``sin`` from float32 ``inv_freq``, SDPA with the same mask and GQA handling), so the
hidden states equal ``output_hidden_states=True`` to float rounding. Any configuration it does
not know raises :class:`UnsupportedModel`; the caller then uses transformers. It never runs code
shipped with a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Architectures whose decoder is the Llama block up to the options read in spec_from_config.
_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                  "Qwen2ForCausalLM": "qwen2"}


class UnsupportedModel(Exception):
    """The config asks for something the fast forward does not implement (the message says what)."""


@dataclass(frozen=True)
class DecoderSpec:
    """What the forward needs from config.json."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    sliding_window: int | None  # Mistral's window; sequences must fit in it (no window mask here)

    def tensor_names(self) -> list[str]:
        """Every tensor the forward reads (the LM head is not among them: no logits are made)."""
        names = ["model.embed_tokens.weight", "model.norm.weight"]
        for layer in range(self.num_layers):
            prefix = f"model.layers.{layer}."
            names += [prefix + "input_layernorm.weight", prefix + "post_attention_layernorm.weight"]
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                names.append(f"{prefix}self_attn.{proj}.weight")
                if (self.o_bias if proj == "o_proj" else self.qkv_bias):
                    names.append(f"{prefix}self_attn.{proj}.bias")
            for proj in ("gate_proj", "up_proj", "down_proj"):
                names.append(f"{prefix}mlp.{proj}.weight")
                if self.mlp_bias:
                    names.append(f"{prefix}mlp.{proj}.bias")
        return names


def spec_from_config(config: dict) -> DecoderSpec:
    """The decoder described by a config.json dict, or UnsupportedModel naming the obstacle."""
    architectures = config.get("architectures") or []
    if len(architectures) != 1 or architectures[0] not in _ARCHITECTURES:
        raise UnsupportedModel(f"architecture {architectures}")
    family = _ARCHITECTURES[architectures[0]]
    if config.get("model_type") != family:
        raise UnsupportedModel(f"model_type {config.get('model_type')!r} for {architectures[0]}")
    for key in ("auto_map", "quantization_config"):  # remote code; packed weights
        if config.get(key):
            raise UnsupportedModel(f"config option {key}")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModel("partial_rotary_factor")
    if config.get("tie_last_hidden_states") is False:  # the last hidden state would be un-normed
        raise UnsupportedModel("tie_last_hidden_states false")
    if config.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"hidden_act {config.get('hidden_act')!r}")
    if int(config.get("pretraining_tp", 1) or 1) != 1:
        raise UnsupportedModel("pretraining_tp > 1")
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise UnsupportedModel("num_attention_heads not a multiple of num_key_value_heads")
    head_dim = int(config.get("head_dim") or hidden // heads)
    rope_theta = _rope_theta(config)
    sliding_window = _sliding_window(config, family)
    if family == "llama":
        qkv_bias = o_bias = bool(config.get("attention_bias", False))
        mlp_bias = bool(config.get("mlp_bias", False))
    elif family == "mistral":
        qkv_bias = o_bias = mlp_bias = False
    else:  # qwen2: biased q/k/v projections only
        qkv_bias, o_bias, mlp_bias = True, False, False
    return DecoderSpec(num_layers=int(config["num_hidden_layers"]), hidden_size=hidden, num_heads=heads,
                       num_kv_heads=kv_heads, head_dim=head_dim,
                       rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=rope_theta,
                       qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=mlp_bias, sliding_window=sliding_window)


def _rope_theta(config: dict) -> float:
    # transformers 5 stores RoPE under rope_parameters; 4.x configs use rope_theta + rope_scaling.
    # Either way only the plain ("default") RoPE is implemented here.
    parameters = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(parameters, dict) or any(isinstance(value, dict) for value in parameters.values()):
        raise UnsupportedModel("per-layer rope parameters")
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedModel(f"rope type {rope_type!r}")
    if parameters.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModel("partial_rotary_factor")
    # 10000 is the default of all three config classes in transformers 5.
    return float(parameters.get("rope_theta", config.get("rope_theta", 10_000.0)))


def _sliding_window(config: dict, family: str) -> int | None:
    if family == "llama":
        return None
    if family == "mistral":
        window = config.get("sliding_window")
        return int(window) if window else None
    # Qwen2: a window only in layers marked sliding_attention, which exist only with use_sliding_window.
    layer_types = config.get("layer_types")
    if config.get("use_sliding_window") or (layer_types and set(layer_types) != {"full_attention"}):
        raise UnsupportedModel("qwen2 sliding-window layers")
    return None


def check_weights(spec: DecoderSpec, weights: dict[str, torch.Tensor]) -> None:
    """UnsupportedModel when ``weights`` lacks a tensor the forward reads (other naming schemes)."""
    missing = [name for name in spec.tensor_names() if name not in weights]
    if missing:
        raise UnsupportedModel(f"no tensor {missing[0]!r} ({len(missing)} missing)")


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: normalised in float32, scaled in the input dtype. (b, t, d) -> (b, t, d)."""
    input_dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    return weight * hidden.to(input_dtype)


def rope_cos_sin(spec: DecoderSpec, length: int, dtype: torch.dtype,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of positions 0..length-1, each (1, length, head_dim), computed as transformers does
    (float32 inverse frequencies, so a theta of 1e5 rounds identically)."""
    dim = spec.head_dim
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    positions = torch.arange(length, device=device).unsqueeze(0)  # (1, t)
    freqs = positions[..., None].float() * inv_freq.to(device=device, dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _repeat_kv(states: torch.Tensor, repeats: int) -> torch.Tensor:
    """(b, kv_heads, t, hd) -> (b, kv_heads * repeats, t, hd), each kv head repeated in place."""
    if repeats == 1:
        return states
    batch, kv_heads, length, head_dim = states.shape
    expanded = states[:, :, None].expand(batch, kv_heads, repeats, length, head_dim)
    return expanded.reshape(batch, kv_heads * repeats, length, head_dim)


def attention_mask_for(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The boolean (b, 1, t, t) SDPA mask, causal and without padded keys; None when there is no
    padding, as transformers then passes is_causal to SDPA instead of a mask."""
    if bool(attention_mask.all()):
        return None
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    causal = positions[None, :] <= positions[:, None]  # (q, kv)
    return causal[None, None] & attention_mask.bool()[:, None, None, :]


def _linear(x: torch.Tensor, weights: dict[str, torch.Tensor], name: str, bias: bool) -> torch.Tensor:
    return F.linear(x, weights[name + ".weight"], weights[name + ".bias"] if bias else None)


def decoder_block(hidden: torch.Tensor, weights: dict[str, torch.Tensor], layer: int, spec: DecoderSpec,
                  cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One pre-norm decoder block. hidden (b, t, d) -> (b, t, d)."""
    prefix = f"model.layers.{layer}."
    batch, length, _ = hidden.shape
    normed = rms_norm(hidden, weights[prefix + "input_layernorm.weight"], spec.rms_norm_eps)
    shape = (batch, length, -1, spec.head_dim)
    query = _linear(normed, weights, prefix + "self_attn.q_proj", spec.qkv_bias).view(shape).transpose(1, 2)
    key = _linear(normed, weights, prefix + "self_attn.k_proj", spec.qkv_bias).view(shape).transpose(1, 2)
    value = _linear(normed, weights, prefix + "self_attn.v_proj", spec.qkv_bias).view(shape).transpose(1, 2)
    cos_heads, sin_heads = cos.unsqueeze(1), sin.unsqueeze(1)
    query = query * cos_heads + _rotate_half(query) * sin_heads
    key = key * cos_heads + _rotate_half(key) * sin_heads
    groups = spec.num_heads // spec.num_kv_heads
    extra = {}
    if groups > 1:
        # transformers lets SDPA broadcast the kv heads only when there is no mask; with a mask it
        # repeats them. Doing the same keeps the kernel choice, hence the rounding, identical.
        if mask is None and spec.head_dim <= 256:
            extra["enable_gqa"] = True
        else:
            key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                              scale=spec.head_dim ** -0.5,
                                              is_causal=mask is None and length > 1, **extra)
    attended = attended.transpose(1, 2).contiguous().reshape(batch, length, -1).contiguous()
    hidden = hidden + _linear(attended, weights, prefix + "self_attn.o_proj", spec.o_bias)
    normed = rms_norm(hidden, weights[prefix + "post_attention_layernorm.weight"], spec.rms_norm_eps)
    gate = _linear(normed, weights, prefix + "mlp.gate_proj", spec.mlp_bias)
    up = _linear(normed, weights, prefix + "mlp.up_proj", spec.mlp_bias)
    return hidden + _linear(F.silu(gate) * up, weights, prefix + "mlp.down_proj", spec.mlp_bias)


@torch.no_grad()
def hidden_states(weights: dict[str, torch.Tensor], spec: DecoderSpec, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """transformers' ``hidden_states`` for right-padded ``input_ids`` (b, t): num_layers + 1 tensors
    (b, t, d); index 0 the embeddings, j + 1 the output of block j, and (as transformers 5 ties the
    last entry to ``last_hidden_state``) the final norm applied to the last one."""
    embedding = weights["model.embed_tokens.weight"]
    hidden = F.embedding(input_ids, embedding)
    cos, sin = rope_cos_sin(spec, input_ids.shape[1], hidden.dtype, hidden.device)
    if spec.sliding_window is not None and input_ids.shape[1] > spec.sliding_window:
        raise UnsupportedModel(f"sequences longer than the sliding window ({spec.sliding_window})")
    mask = attention_mask_for(attention_mask)
    outputs = [hidden]
    for layer in range(spec.num_layers):
        hidden = decoder_block(hidden, weights, layer, spec, cos, sin, mask)
        outputs.append(hidden)
    outputs[-1] = rms_norm(hidden, weights["model.norm.weight"], spec.rms_norm_eps)
    return tuple(outputs)
