"""RECALL (Wang et al., EMNLP 2025): representation-aligned, layer-wise merging.

Planning pass: typical samples of the newest task (K-means in M_N's space) → mean-pooled hidden
states of every model, per layer → similarity S^(j) → α_j = softmax(S^(j)[N, :] / τ). With
``probes: generated`` each older expert's own texts (probes.py) add a row read from its side, and
α_j is the mean of the rows.
Tensor function: θ_j = Σ_k α_j^(k) θ_j^(k) (``variant: paper``), or a task-vector form (plain,
TIES, TSV-M, Iso-C or KnOTS of the weighted task vectors).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator

from recall_merge.errors import ConfigError, ConfigValueError, RecallSampleWarning
from recall_merge.methods import knots, ops
from recall_merge.methods.base import MergeMethod, StrictParameters, TensorPosition
from recall_merge.methods.lines import LinesParameters, LinesScaling, check_scale_range
from recall_merge.recall import probes
from recall_merge.recall.representations import (
    distinct_inputs,
    representation_tokenizer,
    states_for_all_models,
)
from recall_merge.recall.samples import MAX_SAMPLES, check_samples_file, read_samples
from recall_merge.recall.similarity import similarity_matrix, softmax_weights
from recall_merge.recall.typical import select_typical


def weights_from_row(row: torch.Tensor, temperature: float, *, standardize: bool = False,
                     newest_share: float | None = None) -> torch.Tensor:
    """α over the included models from M_N's similarity row (M_N last).

    standardize: z-score the row first, so τ acts on a scale-free score. newest_share: M_N gets
    that fixed share and the others split the rest by softmax over their own similarities to M_N,
    which removes the self-similarity bias (S[N, N] = 1 by construction).
    """
    scores = row.to(torch.float64)
    if standardize and scores.numel() > 1:
        spread = scores.std()
        scores = (scores - scores.mean()) / spread if spread > 0 else torch.zeros_like(scores)
    if newest_share is None or scores.numel() == 1:
        return softmax_weights(scores, temperature)
    others = softmax_weights(scores[:-1], temperature) * (1.0 - newest_share)
    return torch.cat([others, torch.tensor([newest_share], dtype=torch.float64)])


def mean_expert_agreement(similarity: torch.Tensor) -> float:
    """Mean off-diagonal similarity among the experts M_1..M_N (1.0 with a single expert)."""
    experts = similarity[1:, 1:]
    count = experts.shape[0]
    if count < 2:
        return 1.0
    return float((experts.sum() - experts.diagonal().sum()) / (count * (count - 1)))


def redundancy_strength(shifts: torch.Tensor, *, eps: float = 1e-8) -> float:
    """Strength of the summed task vectors from how much the experts' representation shifts overlap.

    ``shifts`` (N, m, d): h_k − h_0 of each expert on the same m typical samples at one layer. With
    C the cosine matrix of the flattened shifts, off-diagonals clipped at 0 (opposed shifts are not
    made stronger), λ = N / Σ_ik C_ik: N copies of one shift give λ = 1/N (their sum is that shift
    once), N orthogonal shifts λ = 1 (task arithmetic's sum keeps each). Where no expert moved the
    representations (every shift ~0, e.g. below a LoRA's first adapted block) λ = 1: nothing to scale.
    """
    count = shifts.shape[0]
    flat = shifts.reshape(count, -1).to(torch.float64)
    norms = flat.norm(dim=1)
    moved = norms > eps * max(float(norms.max()), 1.0)
    if count < 2 or int(moved.sum()) < 2:
        return 1.0
    unit = flat[moved] / norms[moved, None]
    cosine = (unit @ unit.T).clamp(min=0.0, max=1.0)
    cosine.fill_diagonal_(1.0)
    # experts that did not move here count as orthogonal to the rest (diagonal 1, off-diagonal 0)
    total = float(cosine.sum()) + float(count - int(moved.sum()))
    return count / total


class NewestShareRamp(StrictParameters):
    """M_N's share across depth: ``start`` at the first block, ``end`` at the last, linear between."""

    start: float = Field(..., gt=0, lt=1)
    end: float = Field(..., gt=0, lt=1)

    def at(self, layer: int, num_layers: int) -> float:
        return self.start + (self.end - self.start) * (layer / (num_layers - 1) if num_layers > 1 else 0.0)


class RecallParameters(StrictParameters):
    """Options of RECALL (docs/recall.md: each default, and which the paper states or we chose)."""

    variant: Literal["paper", "task_vector", "ties", "tsv_m", "iso_c", "knots"] = Field(
        "paper",
        description="paper: θ_j = Σ_k α_j^(k) θ_j^(k) over M_0..M_N. task_vector: α renormalised over "
        "the experts (ᾱ) and applied to task vectors, θ_j = θ_base + λ_j·N·Σ_k ᾱ_j^(k) τ_j^(k). "
        "ties: the same weights N·ᾱ_j inside TIES (trim to `density`, sign election, disjoint mean). "
        "tsv_m / iso_c: TSV-M or Iso-C of the weighted task vectors N·ᾱ_j^(k) τ_j^(k) (uniform α: "
        "exactly those methods at α = scale). knots: KnOTS-TIES (methods/knots.py, its defaults: "
        "density 1.0, eps 1e-5, S·V_k merged) of the weighted task vectors, the joint SVD of every "
        "2-D tensor's N·ᾱ_j^(k) τ_j^(k) and TIES of the aligned factors, other tensors TIES of the "
        "weighted task vectors themselves; scale defaults to KnOTS' λ = 0.5 (uniform α: exactly "
        "the knots method at lambda = scale).",
    )
    num_typical: int = Field(20, ge=1, le=MAX_SAMPLES,
                             description="number of clusters m = number of typical samples (1 to "
                             f"{MAX_SAMPLES:,}, and at most the number of samples)")
    selection: Literal["kmeans", "random"] = "kmeans"
    cluster_layer: int = Field(-1, ge=-100_000, le=100_000,
                               description="hidden-state index clustered: 0 the embeddings, j the "
                               "output of block j, negative counts from the end (-1: last block); "
                               "from -(L+1) to L for models of L blocks, checked when they are opened")
    temperature: float = Field(1.0, ge=1e-6, description="softmax temperature τ, finite and at least "
                               "1e-6 (a smaller τ overflows the softmax; a large one gives uniform α)")
    kernel: Literal["rbf", "cosine", "cka"] = "rbf"
    aggregation: Literal["aligned", "all_pairs"] = "aligned"
    bandwidth: Literal["median", "median_aligned"] | float = Field(
        "median", description="median: median pairwise distance over all pooled states of the layer; "
        "median_aligned: median over same-sample cross-model distances; a number: fixed σ, from "
        "1e-9 to 1e9 (a smaller σ² underflows to 0 and the kernel to NaN)"
    )
    include_base: bool = Field(True, description="the base M_0 takes part in the softmax and the merge")
    per_layer: bool = Field(True, description="False: one global α (mean over layers) for every layer")
    embeddings: Literal["first_layer", "mean"] = "first_layer"
    head: Literal["last_layer", "mean"] = "last_layer"
    scale: float = Field(1.0, gt=0, le=1e3, description="λ of the task-vector variants, above 0 and "
                         "at most 1000 (finite); variant knots: KnOTS' λ = 0.5 when not given")
    density: float = Field(0.2, gt=0, le=1, description="ties variant: fraction of task-vector entries "
                           "kept; variant knots: fraction of each aligned factor kept, KnOTS' 1.0 "
                           "(no trim) when not given")
    similarity_space: Literal["states", "shifts"] = Field(
        "states", description="compare hidden states h_k, or their shifts from the base h_k − h_0")
    standardize: bool = Field(False, description="z-score M_N's similarity row per layer before the "
                              "softmax, so τ is scale-free")
    newest_share: Annotated[float, Field(gt=0, lt=1)] | NewestShareRamp | None = Field(
        None, description="a share of the weight for M_N, fixed or a depth ramp {start, end} "
        "(block 0 gets start, the last block end, linear between); the other models split the rest by "
        "softmax of their similarity to M_N (removes M_N's self-similarity bias)")
    strength: Literal["none", "agreement", "redundancy"] = Field(
        "none", description="agreement: per-layer task-vector strength λ_j ∝ mean similarity among the "
        "experts at layer j (mean 1 over layers). redundancy: λ_j = N / Σ_ik C_j[i, k], C_j the cosine "
        "(clipped at 0) between the experts' representation shifts h_k − h_0 at layer j, so N identical "
        "shifts are averaged (λ = 1/N) and orthogonal ones summed (λ = 1); no λ to tune. Both for the "
        "task_vector and ties variants, times `scale`")
    lines: LinesParameters | None = Field(
        None, description="task_vector and ties variants: LiNeS depth ramp {alpha, beta} in place "
        "of `scale`: block l of L gets alpha + beta*l/(L-1) (times `strength`), tensors outside the "
        "blocks alpha; alpha: auto is the paper's multi-task rule (one extra pass over the tensors)")
    max_length: int = Field(256, ge=8, description="tokens per sample for the representation pass")
    truncation_side: Literal["right", "left"] = Field(
        "right", description="which end of a sample longer than max_length is cut in the "
        "representation pass: right keeps its start (chat frame and instruction), left keeps its end "
        "(the input itself and the generation prompt). Samples that share an instruction longer "
        "than max_length are the same input under right; the report counts the distinct ones")
    batch_size: int = Field(8, ge=1)
    probes: Literal["newest", "generated"] = Field(
        "newest", description="newest: every weight row is read from the newest task's typical "
        "samples in M_N's space (the paper). generated: each older expert M_k also writes "
        "`generated_samples` texts itself from fixed neutral prompts (seeded sampling, temperature "
        "1, top-p 0.95), which stand in for its task's inputs; per layer, the similarity on each "
        "probe set P_k (P_N the typical samples) gives the row α^(k) read from M_k's side, and α "
        "is the mean of the N rows. A candidate under study, not the paper's method")
    generated_samples: int = Field(16, ge=1, le=1024, description="probes: generated: texts each "
                                   "older expert writes (1 to 1024)")
    generated_tokens: int = Field(48, ge=1, le=2048, description="probes: generated: new tokens "
                                  "per text at most (1 to 2048)")

    @field_validator("bandwidth", mode="before")
    @classmethod
    def _bandwidth_in_range(cls, value: Any) -> Any:
        # Before pydantic's union of the two rules and a number, so the message is about σ, not
        # about which member of the union failed.
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return value
        try:
            sigma = float(value)
        except (ValueError, OverflowError):
            return value  # a rule name, or not a number: the union says which
        fix = "give a fixed bandwidth between 1e-9 and 1e9, or 'median' / 'median_aligned'"
        if not math.isfinite(sigma):
            raise ConfigValueError(f"a fixed bandwidth must be finite, not {sigma}", fix)
        if sigma <= 0:
            raise ConfigValueError(f"a fixed bandwidth must be > 0, not {sigma:g}", fix)
        if not 1e-9 <= sigma <= 1e9:
            raise ConfigValueError(f"a fixed bandwidth of {sigma:g} is outside [1e-9, 1e9]", fix)
        return value


class RecallMethod(LinesScaling, MergeMethod):
    name = "recall"
    summary = "RECALL: per-layer weights from the models' hidden-state similarity on typical samples of the newest task (Wang et al. 2025)"
    parameters_model = RecallParameters
    needs_samples = True
    # Every tensor merge_tensor makes lives on its inputs' device in their dtype, so the engine
    # may run it on `device` in `compute_dtype` (engine.compute_placement).
    compute_on_device = True

    def is_elementwise(self) -> bool:
        # TIES ranks magnitudes over the whole tensor; TSV-M, Iso-C and KnOTS take a whole
        # matrix's SVD
        return self.parameters.variant in ("paper", "task_vector")

    def __init__(self, parameters, config, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        if config.samples is None:
            raise ConfigError("method recall needs `samples`: the newest task's inputs",
                              "add `samples: PATH` (.jsonl with a \"text\" field, or .txt one per line)")
        # Hidden states are indexed 0 (embeddings) to num_layers (last block); Python's negative
        # indices count from the end. Checked here, once the models' depth is known from their
        # headers, rather than as an IndexError after the whole representation pass.
        states = num_layers + 1
        if not -states <= parameters.cluster_layer < states:
            raise ConfigError(
                f"parameters.cluster_layer is {parameters.cluster_layer}, but the models have "
                f"{num_layers} blocks: hidden states 0 (embeddings) to {num_layers} (last block)",
                f"use a cluster_layer from {-states} to {num_layers} (-1, the default, is the last block)")
        check_samples_file(config.samples)  # a folder, a device or a pipe: refused before any weight
        self.lines = parameters.lines
        if self.lines is not None:
            if parameters.variant == "paper":
                raise ConfigError(
                    "parameters.lines is set, but variant paper averages whole weights (α sum to 1): "
                    "there is no task-vector scale for LiNeS to ramp",
                    "use variant: task_vector (or ties) with lines, or remove parameters.lines")
            if "scale" in parameters.model_fields_set:
                raise ConfigError(
                    "parameters.scale and parameters.lines are both set; LiNeS replaces the single "
                    "scale with one scale per block",
                    "remove parameters.scale and give the scale as parameters.lines.alpha (the "
                    "shallowest block) and parameters.lines.beta (added across depth)")
            check_scale_range(self.lines, 1e3)
        self._check_probe_options(parameters)
        # variant knots runs with KnOTS' own defaults (TIES without a trim, λ = 0.5) unless the
        # config names density or scale, so uniform α is the knots method as shipped
        knots_default_scale = parameters.variant == "knots" and "scale" not in parameters.model_fields_set
        self.scale = knots.DEFAULT_LAMBDA["ties"] if knots_default_scale else parameters.scale
        self.knots_density = (parameters.density if "density" in parameters.model_fields_set
                              else knots.DEFAULT_DENSITY["ties"])
        self.alpha_per_layer: torch.Tensor | None = None  # (num_layers, N + 1), float64
        self.strength_per_layer: torch.Tensor | None = None  # (num_layers,), task-vector variants
        self.layer_reports: list[dict[str, Any]] = []
        self.typical: list[dict[str, Any]] = []
        self.generated: dict[int, list[str]] = {}  # probes: generated, expert index → its texts
        self.distinct_typical: int | None = None  # typical samples that differ as the models see them
        self.timings: dict[str, float] = {}

    @staticmethod
    def _check_probe_options(parameters: RecallParameters) -> None:
        given = sorted({"generated_samples", "generated_tokens"} & parameters.model_fields_set)
        if parameters.probes == "newest" and given:
            raise ConfigError(
                f"parameters.{given[0]} is set, but probes is newest: no expert generates texts",
                f"set parameters.probes: generated, or remove parameters.{given[0]}")
        if parameters.probes == "generated" and parameters.newest_share is not None:
            # each row α^(k) is read from M_k's side, where M_N's share has no single meaning
            raise ConfigError(
                "parameters.newest_share is set with probes: generated; newest_share fixes M_N's "
                "share in a row read from M_N's side, but generated probes read one row from each "
                "expert's side",
                "remove parameters.newest_share, or use probes: newest")

    # ----------------------------------------------------------------------------- planning
    def plan(self, pool, *, quiet: bool = False) -> None:
        params: RecallParameters = self.parameters
        newest = len(pool.experts)  # M_N's index among M_0..M_N
        texts = read_samples(self.config.samples, min_count=params.num_typical)
        common = dict(max_length=params.max_length, batch_size=params.batch_size,
                      use_chat_template=True, trust_remote_code=self.config.trust_remote_code,
                      device=self.config.device, quiet=quiet, truncation_side=params.truncation_side,
                      compute_dtype=getattr(torch, self.config.compute_dtype))

        started = time.perf_counter()
        newest_states = states_for_all_models(pool, texts, model_indices=[newest], **common)[newest]
        chosen = select_typical(newest_states[params.cluster_layer], params.num_typical,
                                seed=self.config.seed, selection=params.selection)
        self.typical = [{"index": index, "text": texts[index]} for index in chosen]
        self.distinct_typical = distinct_inputs(
            representation_tokenizer(pool.base.folder, self.config.trust_remote_code),
            [texts[i] for i in chosen], max_length=params.max_length, use_chat_template=True,
            truncation_side=params.truncation_side)
        if self.distinct_typical < len(chosen):
            # the similarities then rest on fewer samples than asked, often on the shared
            # instruction alone: say so rather than merge on it silently
            warnings.warn(
                f"only {self.distinct_typical} of the {len(chosen)} typical samples differ within "
                f"the first {params.max_length} tokens of the representation pass (a shared "
                "instruction or chat frame fills them), so RECALL's weights rest on "
                f"{self.distinct_typical} input(s). Fix: raise parameters.max_length, or set "
                "parameters.truncation_side: left to keep each sample's end",
                RecallSampleWarning, stacklevel=2)
        self.timings["typical_samples_s"] = time.perf_counter() - started

        started = time.perf_counter()
        others = states_for_all_models(pool, [texts[i] for i in chosen],
                                       model_indices=list(range(newest)), **common)
        others[newest] = newest_states[:, chosen]
        self.timings["representations_s"] = time.perf_counter() - started

        probe_sets = {newest: others}
        if params.probes == "generated" and newest > 1:
            probe_sets.update(self._generated_probe_states(pool, newest, common))

        started = time.perf_counter()
        self.alpha_per_layer = self._weights_from_states(probe_sets, newest)
        self.timings["similarity_s"] = time.perf_counter() - started
        if self.lines is not None:  # alpha: auto reads the unscaled merged task vector once
            started = time.perf_counter()
            self.resolve_lines_alpha(
                pool, lambda name, position, base, experts:
                self._task_vector_merge(position, base, experts, scale=1.0) - base, quiet)
            self.timings["lines_alpha_s"] = time.perf_counter() - started

    def _generated_probe_states(self, pool, newest: int, common: dict[str, Any]
                                ) -> dict[int, dict[int, torch.Tensor]]:
        """probes: generated: each older expert M_k (k = 1..N−1) writes its probe set P_k
        (probes.py), then every model M_0..M_N runs on all of them in one representation pass.
        → {k: {model: (L+1, |P_k|, d)}}."""
        params: RecallParameters = self.parameters
        older = list(range(1, newest))
        started = time.perf_counter()
        self.generated = probes.generate_probes(
            pool, older, count=params.generated_samples, new_tokens=params.generated_tokens,
            seed=self.config.seed, trust_remote_code=self.config.trust_remote_code,
            device=self.config.device, dtype=common["compute_dtype"])
        self.timings["probe_generation_s"] = time.perf_counter() - started

        started = time.perf_counter()
        texts = [text for k in older for text in self.generated[k]]
        states = states_for_all_models(pool, texts, model_indices=list(range(newest + 1)), **common)
        sets: dict[int, dict[int, torch.Tensor]] = {}
        for position, k in enumerate(older):
            columns = slice(position * params.generated_samples, (position + 1) * params.generated_samples)
            sets[k] = {model: model_states[:, columns] for model, model_states in states.items()}
        self.timings["probe_representations_s"] = time.perf_counter() - started
        return sets

    def _weights_from_states(self, probe_sets: dict[int, dict[int, torch.Tensor]],
                             newest: int) -> torch.Tensor:
        """α per layer from every model's pooled states on each probe set: ``probe_sets[k]`` holds
        M_0..M_N's states on P_k, whose row α^(k) is read from M_k's side (k = N: the typical
        samples, the paper's row). α is the mean of the rows; so are the agreement and
        redundancy strengths. With P_N alone this is the paper's α."""
        params: RecallParameters = self.parameters
        included = list(range(newest + 1)) if params.include_base else list(range(1, newest + 1))
        readers = sorted(probe_sets)
        alphas = torch.zeros(self.num_layers, newest + 1, dtype=torch.float64)
        agreement = torch.ones(self.num_layers, dtype=torch.float64)
        redundancy = torch.ones(self.num_layers, dtype=torch.float64)
        for layer in range(self.num_layers):
            rows: dict[int, torch.Tensor] = {}
            row_reports: list[dict[str, Any]] = []
            agreements: list[float] = []
            redundancies: list[float] = []
            for reader in readers:
                states = probe_sets[reader]
                layer_states = torch.stack([states[k][layer + 1] for k in range(newest + 1)])  # (K, m, d)
                if params.strength == "redundancy":
                    redundancies.append(redundancy_strength(layer_states[1:] - layer_states[0:1]))
                if params.similarity_space == "shifts":
                    layer_states = layer_states - layer_states[0:1]
                similarity, sigma = similarity_matrix(layer_states, params.kernel, params.aggregation,
                                                      params.bandwidth)
                row = torch.zeros(newest + 1, dtype=torch.float64)
                row[included] = weights_from_row(similarity[reader, included], params.temperature,
                                                 standardize=params.standardize,
                                                 newest_share=self._newest_share(layer))
                rows[reader] = row
                agreements.append(mean_expert_agreement(similarity))
                if reader == newest:  # the paper's view keeps the report's fields as they were
                    newest_view = {"similarity": similarity[newest].tolist(),
                                   "similarity_matrix": similarity.tolist(), "bandwidth": sigma}
                row_reports.append({"task": reader, "alpha": row.tolist(),
                                    "similarity": similarity[reader].tolist(), "bandwidth": sigma})
            # every task's view counts equally (a single row is returned as it is)
            alphas[layer] = rows[newest] if len(rows) == 1 else torch.stack(list(rows.values())).mean(dim=0)
            agreement[layer] = sum(agreements) / len(agreements)
            if redundancies:
                redundancy[layer] = sum(redundancies) / len(redundancies)
            entry: dict[str, Any] = {"index": layer, **newest_view}
            if params.probes == "generated":
                entry["probe_rows"] = row_reports
            self.layer_reports.append(entry)
        if not params.per_layer:
            alphas[:] = alphas.mean(dim=0, keepdim=True)
        if params.strength == "agreement":
            self.strength_per_layer = agreement / agreement.mean()
        elif params.strength == "redundancy":
            self.strength_per_layer = redundancy
        else:
            self.strength_per_layer = torch.ones(self.num_layers, dtype=torch.float64)
        for layer, entry in enumerate(self.layer_reports):
            entry["alpha"] = alphas[layer].tolist()
            entry["strength"] = float(self.strength_per_layer[layer])
        return alphas

    def _newest_share(self, layer: int) -> float | None:
        share = self.parameters.newest_share
        return share.at(layer, self.num_layers) if isinstance(share, NewestShareRamp) else share

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

    def strength_for(self, position: TensorPosition) -> float:
        strengths = self.strength_per_layer
        if position.kind == "block":
            return float(strengths[position.layer])
        if position.kind == "embedding":
            return float(strengths[0])
        if position.kind in ("head", "norm"):
            return float(strengths[-1])
        return float(strengths.mean())

    def merge_tensor(self, name: str, position: TensorPosition, base: torch.Tensor,
                     experts: list[torch.Tensor]) -> torch.Tensor:
        alpha = self.alpha_for(position)
        params: RecallParameters = self.parameters
        if params.variant == "paper":
            merged = torch.zeros_like(base)
            for weight, tensor in zip(alpha.tolist(), [base, *experts], strict=True):
                if weight != 0.0:
                    merged.add_(tensor, alpha=weight)
            return merged
        return self._task_vector_merge(position, base, experts, self._task_vector_strength(position))

    def _task_vector_strength(self, position: TensorPosition) -> float:
        """λ of the task-vector forms at ``position``: the scale (or LiNeS' ramp) × the strength."""
        return self.task_vector_scale(position, self.scale) * self.strength_for(position)

    @staticmethod
    def _expert_weights(alpha: torch.Tensor) -> torch.Tensor:
        """N·ᾱ_k: the experts' α normalised to mean 1, so uniform α is task arithmetic."""
        return alpha[1:] / alpha[1:].sum() * (len(alpha) - 1)

    def linear_coefficients(self, position: TensorPosition) -> list[float] | None:
        """The paper form is Σ_i α_i θ_i; the plain task-vector form θ_base + λ Σ_k N·ᾱ_k τ_k
        (:meth:`merge_tensor`). The TIES and SVD forms are not linear in the models."""
        alpha = self.alpha_for(position)
        params: RecallParameters = self.parameters
        if params.variant == "paper":
            return [float(value) for value in alpha.tolist()]
        if params.variant != "task_vector":
            return None
        scale = self._task_vector_strength(position)
        coefficients = [scale * float(weight) for weight in self._expert_weights(alpha).tolist()]
        return [1.0 - sum(coefficients), *coefficients]

    def _task_vector_merge(self, position: TensorPosition, base: torch.Tensor,
                           experts: list[torch.Tensor], scale: float) -> torch.Tensor:
        """The task-vector forms: θ_base + scale · Σ_k N·ᾱ_k τ_k (TIES-trimmed for ties); the mass
        over the experts is preserved, so uniform α is task arithmetic at λ = scale."""
        params: RecallParameters = self.parameters
        alpha = self.alpha_for(position)
        weights = self._expert_weights(alpha).to(device=base.device, dtype=base.dtype)
        deltas = ops.task_vectors(base, experts)
        if params.variant in ("tsv_m", "iso_c"):
            return base + scale * self._svd_merge(deltas * weights.view(-1, *[1] * base.dim()))
        if params.variant == "knots":
            return base + scale * self._knots_merge(deltas * weights.view(-1, *[1] * base.dim()))
        if params.variant == "ties":
            deltas = torch.stack([ops.magnitude_sparsify(delta, params.density) for delta in deltas])
            return ops.combine_task_vectors(base, deltas, weights, consensus="sum", normalize=True,
                                            scale=scale)
        return ops.combine_task_vectors(base, deltas, weights, consensus=None, normalize=False, scale=scale)

    def _svd_merge(self, weighted: torch.Tensor) -> torch.Tensor:
        """TSV-M or Iso-C (methods/svd_ops.py) of the weighted task vectors w_k·τ_k of one tensor:
        with uniform RECALL weights exactly the tsv_m / iso_c method at α = scale. A matrix gets
        the SVD merge; any other tensor, or a matrix of rank below the number of experts under
        TSV-M, the mean of the weighted task vectors (as those methods do)."""
        from recall_merge.methods import svd_ops

        if weighted.dim() != 3:
            return svd_ops.mean_task_vector(list(weighted))
        if self.parameters.variant == "iso_c":
            return svd_ops.isotropic_merge(svd_ops.sum_task_vectors(list(weighted))).delta
        keep = svd_ops.tsv_kept_rank(min(weighted.shape[1:]), weighted.shape[0])
        if keep == 0:
            return svd_ops.mean_task_vector(list(weighted))
        return svd_ops.tsv_merge(list(weighted), keep)

    def _knots_merge(self, weighted: torch.Tensor) -> torch.Tensor:
        """KnOTS-TIES (methods/knots.py) of the weighted task vectors w_k·τ_k of one tensor, before
        λ: a matrix gets the dense joint SVD of [w_1·τ_1 … w_N·τ_N] (float64, singular values above
        KnOTS' eps kept) and TIES of the aligned factors S·V_kᵀ; any other tensor TIES of the
        weighted task vectors themselves, as the knots method does. With uniform RECALL weights
        (w_k = 1) it is the knots method's merged update; the dense route is used for LoRA experts
        too (the knots method's factor route gives the same SVD to ≤ 1e-7). It runs on the CPU, as
        the knots method does (its SVD in float64, its TIES with CPU weights); the result goes back
        to the inputs' device and dtype."""
        on_cpu = list(weighted.cpu())
        if weighted.dim() == 3:
            delta = knots.knots_delta(knots.joint_svd_dense(on_cpu, knots.DEFAULT_EPS), "ties",
                                      self.knots_density)
        else:
            delta = knots.merge_aligned(on_cpu, "ties", self.knots_density)
        return delta.to(device=weighted.device, dtype=weighted.dtype)

    def report(self) -> dict[str, Any]:
        params: RecallParameters = self.parameters
        return {
            "layers": self.layer_reports,
            "embedding_alpha": self.alpha_for(TensorPosition("embedding", None, 0.0)).tolist(),
            "head_alpha": self.alpha_for(TensorPosition("head", None, 1.0)).tolist(),
            "typical_samples": self.typical,
            "distinct_typical_samples": self.distinct_typical,
            "variant": params.variant,
            **({"probes": "generated", "generated_prompts": list(probes.NEUTRAL_PROMPTS),
                "generated_probes": [{"expert": k, "texts": [text[:200] for text in texts]}
                                     for k, texts in sorted(self.generated.items())]}
               if params.probes == "generated" else {}),
            **({"knots": {"merge": "ties", "density": self.knots_density, "lambda": self.scale,
                          "eps": knots.DEFAULT_EPS, "scale_by_singular_values": True}}
               if params.variant == "knots" else {}),
            "lines": self.lines_report(),
            "planning_timings": self.timings,
        }
