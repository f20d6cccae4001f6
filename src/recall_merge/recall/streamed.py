"""Hidden states block by block: transformers' own decoder, one block's weights in memory at a time.

RECALL needs every model's hidden states at every block on a few samples. Holding a whole model
for that costs its full size in float32 (28 GB for a 7B model), more than the merge itself ever
needs. Here the model is built once from its config with empty (meta) parameters; a hook before
each decoder block loads that block's weights for the model being run (a full checkpoint's own
tensors, or the base's plus one LoRA adapter's ΔW), and a hook after it pools the block's output
and drops the weights again. Everything else — masks, rotary embeddings, sliding windows, Gemma's
scaled embeddings — is transformers' own code, so any decoder transformers supports runs exactly
as ``output_hidden_states=True`` would (tested equal for Llama, Qwen2 and Gemma 3).

Peak memory: one block's float32 weights, the embedding rows of the tokens the samples use, the
final norm, and the activations of one wave of samples (``batch_size`` of them, fewer where they
would pass the activation budget). Each wave reads every block once; samples are sorted by length
first, so a wave pads little. Only the used rows of the embedding are kept because the whole
matrix in float32 is large next to one block: 2.2 GB for Qwen2-7B's 152k-token vocabulary, where
its largest block is 0.9 GB (16 samples of 64 tokens use ~1k rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from recall_merge.io.reader import check_finite

ReadTensor = Callable[[str], torch.Tensor]  # full tensor name -> the model's tensor (any dtype)
DEFAULT_ACTIVATION_BUDGET = 1 << 30  # bytes of activations per wave (1 GiB)
# Models whose float32 weights fit this keep their blocks loaded across the waves of one pass:
# re-reading SmolLM2-135M (0.5 GB) for each of 25 waves made its 200-sample pass ~1.7x slower
# than one read (benchmarks/results/representation_backends.json). Larger models stream.
DEFAULT_RESIDENT_BUDGET = 1 << 30


class UnsupportedForStreaming(Exception):
    """The model's layout does not fit the block-by-block pass (the message says why)."""


class StreamedDecoder:
    """A decoder-only model from ``config.json`` with no weights; ``pooled_states`` runs it on one
    model's tensors at a time."""

    def __init__(self, folder: Path, tensor_names: set[str], *, device: torch.device,
                 trust_remote_code: bool = False, dtype: torch.dtype = torch.float32) -> None:
        import transformers
        from accelerate import init_empty_weights

        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        # Buffers (rotary frequencies, Gemma's embedding scale) are real: they come from the
        # config, not from the checkpoint. Parameters are empty until a hook loads them.
        with init_empty_weights(include_buffers=False):
            skeleton = transformers.AutoModelForCausalLM.from_config(
                config, dtype=dtype, trust_remote_code=trust_remote_code)
        skeleton.eval()
        decoder = getattr(skeleton, "model", None)
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not hasattr(decoder, "embed_tokens"):
            raise UnsupportedForStreaming(f"{type(skeleton).__name__} has no model.layers / embed_tokens")
        self.config = config
        self.device = device
        self.dtype = dtype  # of the weights and the forward (compute_dtype); pooled states are float32
        _move_buffers(decoder, device)  # parameters stay empty until a block runs
        self.decoder = decoder
        self.layers = layers
        names = {id(module): name for name, module in skeleton.named_modules()}
        self._prefix = {id(module): names[id(module)] + "." for module in self._resident() + list(layers)}
        needed = {self._prefix[id(module)] + local for module in self._resident() + list(layers)
                  for local, _ in module.named_parameters()}
        missing = sorted(needed - tensor_names)
        if missing:
            raise UnsupportedForStreaming(f"the checkpoint has no tensor {missing[0]!r} "
                                          f"({len(missing)} of the model's parameters missing)")
        self.num_states = len(layers) + 1
        self.float32_bytes = 4 * sum(parameter.numel() for module in [*self._resident(), *layers]
                                     for parameter in module.parameters())
        self.keep_blocks = False  # set per pass: True keeps each block loaded across waves
        self._read: ReadTensor | None = None
        self._source = ""
        self._pooled: list[torch.Tensor | None] = []
        self._mask: torch.Tensor | None = None
        layers[0].register_forward_pre_hook(self._pool_input_hook, with_kwargs=True)
        for index, layer in enumerate(layers):
            layer.register_forward_pre_hook(self._load_hook, with_kwargs=True)
            layer.register_forward_hook(self._make_pool_hook(index + 1), with_kwargs=True)

    def _resident(self) -> list[torch.nn.Module]:
        """Modules whose weights stay loaded for a whole pass: the embeddings and the final norm."""
        modules = [self.decoder.embed_tokens]
        if isinstance(getattr(self.decoder, "norm", None), torch.nn.Module):
            modules.append(self.decoder.norm)
        return modules

    def _load(self, module: torch.nn.Module, rows: torch.Tensor | None = None) -> None:
        """Load ``module``'s weights for the model being run; ``rows``: keep only those rows of
        each (the embedding's used tokens)."""
        prefix = self._prefix[id(module)]
        weights = {}
        for local, _ in module.named_parameters():
            tensor = self._read(prefix + local)
            check_finite(tensor, prefix + local, self._source)
            if rows is not None:
                tensor = tensor[rows]  # the full tensor read here is freed on return
            weights[local] = tensor.to(device=self.device, dtype=self.dtype)
        if rows is None:
            module.load_state_dict(weights, strict=True, assign=True)
        else:  # fewer rows than the module was built with: load_state_dict would refuse the shape
            for local, tensor in weights.items():
                module._parameters[local] = torch.nn.Parameter(tensor, requires_grad=False)

    @staticmethod
    def _unload(module: torch.nn.Module) -> None:
        """Drop the weights (parameters back to meta); buffers such as Gemma's embedding scale or
        rotary frequencies come from the config and stay."""
        for child in module.modules():
            for name, parameter in list(child._parameters.items()):
                if parameter is not None and not parameter.is_meta:
                    child._parameters[name] = torch.nn.Parameter(
                        torch.empty_like(parameter, device="meta"), requires_grad=False)

    def _load_hook(self, module, args, kwargs) -> None:
        if not (self.keep_blocks and _is_loaded(module)):
            self._load(module)

    def _pool_input_hook(self, module, args, kwargs) -> None:
        # The first block's input is hidden_states[0] in every architecture (Gemma's embedding
        # scale included), wherever the model applies it.
        hidden = args[0] if args else kwargs["hidden_states"]
        self._pooled[0] = _masked_mean(hidden, self._mask)

    def _make_pool_hook(self, index: int):
        def hook(module, args, kwargs, output) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self._pooled[index] = _masked_mean(hidden, self._mask)
            if not self.keep_blocks:
                self._unload(module)
        return hook

    @torch.no_grad()
    def pooled_states(self, read: ReadTensor, batches: list[dict[str, torch.Tensor]], *,
                      source: str = "", resident_budget: int = 0) -> torch.Tensor:
        """Mean-pooled hidden states (num_layers + 1, samples, hidden), float32, padding excluded:
        index 0 the embeddings, j + 1 the output of block j, and — as transformers' hidden_states —
        the final norm applied to the last entry.

        A model whose float32 weights fit ``resident_budget`` bytes keeps each block loaded from
        the first wave to the last (read once per pass instead of once per wave); a larger one
        holds one block at a time. Both give the same states."""
        self._read, self._source = read, source
        self.keep_blocks = len(batches) > 1 and self.stays_loaded(resident_budget)
        # The embedding holds only the rows of the tokens used, indexed by their rank among them;
        # padding_idx only masks gradients, but F.embedding checks it against the row count.
        used = torch.unique(torch.cat([batch["input_ids"].flatten() for batch in batches]))
        embedding = self.decoder.embed_tokens
        padding_idx, embedding.padding_idx = getattr(embedding, "padding_idx", None), None
        self._load(embedding, rows=used)
        for module in self._resident()[1:]:
            self._load(module)
        chunks = []
        try:
            for batch in batches:
                batch = {key: value.to(self.device) for key, value in batch.items()}
                self._mask = batch["attention_mask"]
                self._pooled = [None] * self.num_states
                input_ids = torch.searchsorted(used.to(self.device), batch["input_ids"])
                output = self.decoder(input_ids=input_ids, attention_mask=self._mask,
                                      use_cache=False)
                self._pooled[-1] = _masked_mean(output.last_hidden_state, self._mask)
                chunks.append(torch.stack(self._pooled, dim=0).cpu())
        finally:
            for module in [*self._resident(), *self.layers]:
                self._unload(module)
            embedding.padding_idx = padding_idx
            self._read, self._pooled, self._mask = None, [], None
            self.keep_blocks = False
        return torch.cat(chunks, dim=1)

    def stays_loaded(self, resident_budget: int) -> bool:
        """Whether a pass keeps each block loaded across its waves: float32 weights within
        ``resident_budget`` bytes."""
        return self.float32_bytes <= resident_budget

    def pass_wave(self, count: int, max_length: int, batch_size: int, *,
                  resident_budget: int = DEFAULT_RESIDENT_BUDGET,
                  activation_budget: int = DEFAULT_ACTIVATION_BUDGET) -> int:
        """Samples per wave of a pass over ``count`` samples. A model kept loaded across waves
        (float32 weights within ``resident_budget``) runs ``batch_size`` at a time. A larger one
        reads every block again for each wave, and a LoRA expert's blocks are rebuilt (base + B·A,
        in float64) each time, which at 7B costs more than a wave's padding: Llama-2-7B with three
        LoRA experts in bfloat16, 16 samples in two waves of 8, took 1.55× the forward of whole
        models, and 1.18× in one wave of 16 (docs/speed.md). So its waves are as large as the
        activation budget allows."""
        if self.stays_loaded(resident_budget):
            return self.wave_size(max_length, batch_size, activation_budget)
        return self.wave_size(max_length, max(batch_size, count), activation_budget)

    def wave_size(self, max_length: int, batch_size: int,
                  activation_budget: int = DEFAULT_ACTIVATION_BUDGET) -> int:
        """Samples per wave: ``batch_size``, lowered where its activations at ``max_length`` tokens
        (estimated from a block's widest tensors: residual stream, attention scores, MLP) would
        pass ``activation_budget``. Bigger waves would read the weights fewer times, but a read
        costs about as much as the forward of ~50 tokens (2 bytes vs 2 FLOPs per parameter, at
        ~1 GB/s and ~50 GFLOP/s on two cores), while a big wave pads every sample to its longest
        one: measured on SmolLM2 (benchmarks/results/representation_backends.json), one wave of
        200 samples was slower than 25 waves of 8."""
        hidden = int(getattr(self.config, "hidden_size", 0) or 0)
        intermediate = int(getattr(self.config, "intermediate_size", 0) or 4 * hidden)
        heads = int(getattr(self.config, "num_attention_heads", 0) or 1)
        per_sample = 4 * max_length * (8 * hidden + 3 * intermediate + heads * max_length)
        return max(1, min(batch_size, activation_budget // max(per_sample, 1)))


def _is_loaded(module: torch.nn.Module) -> bool:
    return any(not parameter.is_meta for parameter in module.parameters())


def _move_buffers(module: torch.nn.Module, device: torch.device) -> None:
    for child in module.modules():
        for name, buffer in list(child._buffers.items()):
            if buffer is not None and buffer.device != device:
                child._buffers[name] = buffer.to(device)


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(b, t, d), (b, t) -> (b, d): the mean over real tokens, in float32."""
    weights = mask.unsqueeze(-1).to(torch.float32)
    return (hidden.to(torch.float32) * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def waves(total: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of ⌈total / size⌉ nearly equal waves (less padding than a remainder)."""
    count = max(1, math.ceil(total / max(size, 1)))
    bounds = [round(total * index / count) for index in range(count + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(count) if bounds[i + 1] > bounds[i]]
