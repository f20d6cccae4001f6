"""RECALL (Wang et al., EMNLP 2025): representation-aligned, layer-wise merging.

Planning pass: typical samples of the newest task (K-means in M_N's space) → mean-pooled hidden
states of every model, per layer → similarity S^(j) → α_j = softmax(S^(j)[N, :] / τ).
Tensor function: θ_j = Σ_k α_j^(k) θ_j^(k) (``variant: paper``), or the task-vector form.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..config import RecallParameters
from ..errors import ConfigError
from ..representations import states_for_all_models
from ..samples import read_samples
from ..similarity import similarity_matrix, softmax_weights
from ..typical import select_typical
from .base import MergeMethod, TensorPosition, register


@register
class RecallMethod(MergeMethod):
    name = "recall"
    parameters_model = RecallParameters
    needs_samples = True

    def __init__(self, parameters, config, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        if config.samples is None:
            raise ConfigError("method recall needs `samples`: the newest task's inputs",
                              "add `samples: PATH` (.jsonl with a \"text\" field, or .txt one per line)")
        self.alpha_per_layer: torch.Tensor | None = None  # (num_layers, N + 1), float64
        self.layer_reports: list[dict[str, Any]] = []
        self.typical: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}

    # ----------------------------------------------------------------------------- planning
    def plan(self, pool, *, quiet: bool = False) -> None:
        params: RecallParameters = self.parameters
        newest = len(pool.experts)  # M_N's index among M_0..M_N
        texts = read_samples(self.config.samples, min_count=params.num_typical)
        common = dict(max_length=params.max_length, batch_size=params.batch_size,
                      use_chat_template=True, trust_remote_code=self.config.trust_remote_code,
                      device=self.config.device, quiet=quiet)

        started = time.perf_counter()
        newest_states = states_for_all_models(pool, texts, model_indices=[newest], **common)[newest]
        chosen = select_typical(newest_states[params.cluster_layer], params.num_typical,
                                seed=self.config.seed, selection=params.selection)
        self.typical = [{"index": index, "text": texts[index]} for index in chosen]
        self.timings["typical_samples_s"] = time.perf_counter() - started

        started = time.perf_counter()
        others = states_for_all_models(pool, [texts[i] for i in chosen],
                                       model_indices=list(range(newest)), **common)
        others[newest] = newest_states[:, chosen]
        self.timings["representations_s"] = time.perf_counter() - started

        started = time.perf_counter()
        self.alpha_per_layer = self._weights_from_states(others, newest)
        self.timings["similarity_s"] = time.perf_counter() - started

    def _weights_from_states(self, states: dict[int, torch.Tensor], newest: int) -> torch.Tensor:
        params: RecallParameters = self.parameters
        included = list(range(newest + 1)) if params.include_base else list(range(1, newest + 1))
        alphas = torch.zeros(self.num_layers, newest + 1, dtype=torch.float64)
        for layer in range(self.num_layers):
            layer_states = torch.stack([states[k][layer + 1] for k in range(newest + 1)])  # (K, m, d)
            similarity, sigma = similarity_matrix(layer_states, params.kernel, params.aggregation,
                                                  params.bandwidth)
            alphas[layer, included] = softmax_weights(similarity[newest, included], params.temperature)
            self.layer_reports.append({
                "index": layer,
                "similarity": similarity[newest].tolist(),
                "similarity_matrix": similarity.tolist(),
                "bandwidth": sigma,
            })
        if not params.per_layer:
            alphas[:] = alphas.mean(dim=0, keepdim=True)
        for layer, entry in enumerate(self.layer_reports):
            entry["alpha"] = alphas[layer].tolist()
        return alphas

    # ------------------------------------------------------------------------------ merging
    def alpha_for(self, position: TensorPosition) -> torch.Tensor:
        """α over M_0..M_N for a tensor: its block's, or first/last block's for embeddings/head."""
        params: RecallParameters = self.parameters
        alphas = self.alpha_per_layer
        if position.kind == "block":
            return alphas[position.layer]
        if position.kind == "embedding":
            return alphas[0] if params.embeddings == "first_layer" else alphas.mean(dim=0)
        if position.kind in ("head", "norm"):
            return alphas[-1] if params.head == "last_layer" else alphas.mean(dim=0)
        return alphas.mean(dim=0)

    def merge_tensor(self, name: str, position: TensorPosition, base: torch.Tensor,
                     experts: list[torch.Tensor]) -> torch.Tensor:
        alpha = self.alpha_for(position)
        params: RecallParameters = self.parameters
        if params.variant == "task_vector":
            expert_alpha = alpha[1:] / alpha[1:].sum()
            scale = params.scale * len(experts)
            merged = base.clone()
            for weight, tensor in zip(expert_alpha.tolist(), experts, strict=True):
                merged.add_(tensor - base, alpha=scale * weight)
            return merged
        merged = torch.zeros_like(base)
        for weight, tensor in zip(alpha.tolist(), [base, *experts], strict=True):
            if weight != 0.0:
                merged.add_(tensor, alpha=weight)
        return merged

    def report(self) -> dict[str, Any]:
        params: RecallParameters = self.parameters
        return {
            "layers": self.layer_reports,
            "embedding_alpha": self.alpha_for(TensorPosition("embedding", None, 0.0)).tolist(),
            "head_alpha": self.alpha_for(TensorPosition("head", None, 1.0)).tolist(),
            "typical_samples": self.typical,
            "variant": params.variant,
            "planning_timings": self.timings,
        }
