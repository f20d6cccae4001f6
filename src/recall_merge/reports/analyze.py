"""`recall analyze`: how similar a model's layers are to each other, and models to each other.

Two analyses on the same mean-pooled hidden states (padding excluded, samples framed as a user
turn of the chat template, as in a RECALL merge):

* **Adjacent layers, inside one model.** For block j, the similarity between its input
  ``hidden_states[j]`` and its output ``hidden_states[j + 1]`` over the same samples: the aligned
  RBF kernel (mean over samples p of exp(−‖h_p^j − h_p^{j+1}‖² / 2σ²)) with σ the median distance
  between all 2m pooled vectors of the pair, and linear CKA as a scale-free second view.
* **Across models fine-tuned from one base.** For block j (``hidden_states[j + 1]``), the K×K
  aligned-RBF matrix (median bandwidth over all K·m vectors of the layer, as a RECALL merge
  computes it), the K×K linear CKA, and the relative shift ‖h^k − h^0‖ / ‖h^0‖ of each expert
  from the base (no bandwidth, so it is comparable across depths).

The first model is the base. With one model only the adjacent-layer analysis runs.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from recall_merge.recall.samples import read_samples
from recall_merge.recall.similarity import (
    bandwidth_for,
    linear_cka,
    rbf_similarity,
    similarity_matrix,
)

ANALYSIS_NAME = "analysis.json"
MAX_LENGTH = 256
BATCH_SIZE = 8


def choose_samples(texts: list[str], count: int, seed: int) -> list[str]:
    """A seeded subset of ``count`` texts, in file order (all of them when there are fewer)."""
    if count >= len(texts):
        return list(texts)
    picked = sorted(random.Random(seed).sample(range(len(texts)), count))
    return [texts[i] for i in picked]


def adjacent_layer_similarity(states: torch.Tensor) -> list[dict[str, float]]:
    """Per block j: RBF and CKA between ``states[j]`` and ``states[j + 1]``.

    ``states`` is (L + 1, m, d): the embedding output and the output of each of the L blocks.
    Returns L entries with the block index, ``rbf``, ``cka`` and the ``bandwidth`` σ of the pair.
    """
    pairs: list[dict[str, float]] = []
    for block in range(states.shape[0] - 1):
        pair = states[block:block + 2]  # (2, m, d)
        sigma = bandwidth_for(pair, "median")
        pairs.append({"block": block,
                      "rbf": float(rbf_similarity(pair, sigma, "aligned")[0, 1]),
                      "cka": float(linear_cka(pair)[0, 1]),
                      "bandwidth": sigma})
    return pairs


def relative_shift(states: torch.Tensor) -> list[float]:
    """Mean over samples of ‖h^k − h^0‖ / ‖h^0‖ for every model k; ``states`` is (K, m, d)."""
    base = states[0].to(torch.float64)
    norms = base.norm(dim=-1).clamp_min(1e-12)
    return [float(((states[k].to(torch.float64) - base).norm(dim=-1) / norms).mean())
            for k in range(states.shape[0])]


def _mean_off_diagonal(matrix: torch.Tensor, indices: list[int]) -> float | None:
    values = [float(matrix[a, b]) for a in indices for b in indices if a < b]
    return sum(values) / len(values) if values else None


def cross_model_similarity(states: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Per block j: K×K aligned RBF (median σ) and CKA over models, plus summaries.

    ``states[k]`` is (L + 1, m, d) for model k (k = 0 the base); block j uses index j + 1.
    """
    num_blocks = states[0].shape[0] - 1
    experts = list(range(1, len(states)))
    layers: list[dict[str, Any]] = []
    for block in range(num_blocks):
        layer = torch.stack([s[block + 1] for s in states])  # (K, m, d)
        rbf, sigma = similarity_matrix(layer, "rbf", "aligned", "median")
        cka = linear_cka(layer)
        layers.append({
            "block": block, "bandwidth": sigma,
            "rbf": rbf.tolist(), "cka": cka.tolist(),
            "rbf_to_base": [float(rbf[0, k]) for k in experts],
            "cka_to_base": [float(cka[0, k]) for k in experts],
            "relative_shift_from_base": relative_shift(layer)[1:],
            "rbf_between_experts": _mean_off_diagonal(rbf, experts),
            "cka_between_experts": _mean_off_diagonal(cka, experts),
        })
    return layers


def spearman(values: list[float]) -> float:
    """Spearman rank correlation of ``values`` with their position (depth); 0 for constants."""
    if len(values) < 2:
        return 0.0
    ranks = torch.tensor(values, dtype=torch.float64).argsort().argsort().to(torch.float64)
    depth = torch.arange(len(values), dtype=torch.float64)
    ranks, depth = ranks - ranks.mean(), depth - depth.mean()
    denominator = float(ranks.norm() * depth.norm())
    return float((ranks * depth).sum()) / denominator if denominator > 0 else 0.0


def summarise_adjacent(pairs: list[dict[str, float]], key: str = "rbf") -> dict[str, Any]:
    """First, middle and last block of the adjacent-layer curve, and whether the ends dip.

    ``holds`` (observation 1): the first and the last block are both below every interior block.
    """
    values = [p[key] for p in pairs]
    interior = values[1:-1]
    summary: dict[str, Any] = {"first": values[0], "last": values[-1],
                               "middle": values[len(values) // 2]}
    if interior:
        summary.update(interior_median=float(torch.tensor(interior).median()),
                       interior_min=min(interior),
                       holds=values[0] < min(interior) and values[-1] < min(interior))
    return summary


def _quarter_means(values: list[float]) -> tuple[float, float]:
    quarter = max(len(values) // 4, 1)
    return sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter


def summarise_divergence(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Observation 2 in numbers: mean expert-to-base similarity per depth and its trend.

    ``holds`` for a measure: its Spearman correlation with depth is ≤ −0.5 (similarity) or ≥ 0.5
    (shift) and the last quarter of the blocks is less similar than the first quarter.
    """
    summary: dict[str, Any] = {}
    measures = {"rbf_to_base": -1, "cka_to_base": -1, "relative_shift_from_base": 1,
                "rbf_between_experts": -1, "cka_between_experts": -1}
    for key, direction in measures.items():
        per_block = [layer[key] for layer in layers]
        if any(v is None for v in per_block):
            continue
        curve = [sum(v) / len(v) if isinstance(v, list) else v for v in per_block]
        first_quarter, last_quarter = _quarter_means(curve)
        rho = spearman(curve)
        # Where the models are closest (max similarity / min shift), and the trend from there on:
        # describes curves that first converge and then diverge.
        closest = max(range(len(curve)), key=lambda j: -direction * curve[j])
        summary[key] = {"per_block_mean": curve, "first": curve[0], "middle": curve[len(curve) // 2],
                        "last": curve[-1], "first_quarter": first_quarter,
                        "last_quarter": last_quarter, "spearman_with_depth": rho,
                        "closest_block": closest,
                        "spearman_from_closest_block": spearman(curve[closest:]),
                        "holds": rho * direction >= 0.5
                        and (last_quarter - first_quarter) * direction > 0}
    return summary


def pooled_states(models: list[str], texts: list[str], quiet: bool) -> tuple[list[torch.Tensor], list[str]]:
    """(L + 1, m, d) pooled states of every model (base first) and the models' folders."""
    from recall_merge.io.pool import ModelPool
    from recall_merge.recall.representations import states_for_all_models

    pool = ModelPool.open(models[0], models[1:])
    states = states_for_all_models(pool, texts, max_length=MAX_LENGTH, batch_size=BATCH_SIZE,
                                   use_chat_template=True, quiet=quiet)
    return [states[k] for k in range(len(models))], [str(f) for f in pool.folders()]


def model_labels(folders: list[str]) -> list[str]:
    """Short names for plots: 'base', then each expert's folder name (made unique)."""
    labels = ["base"]
    for index, folder in enumerate(folders[1:], start=1):
        name = Path(folder).name or f"M{index}"
        labels.append(name if name not in labels else f"{name} ({index})")
    return labels


def analyse_states(states: list[torch.Tensor], labels: list[str]) -> dict[str, Any]:
    """Every number of the analysis from the pooled states (pure; no model is loaded)."""
    adjacent = [{"model": label, "pairs": adjacent_layer_similarity(s),
                 } for label, s in zip(labels, states, strict=True)]
    for entry in adjacent:
        entry["summary"] = {"rbf": summarise_adjacent(entry["pairs"], "rbf"),
                            "cka": summarise_adjacent(entry["pairs"], "cka")}
    result: dict[str, Any] = {"adjacent": adjacent, "cross_model": None, "divergence": None}
    if len(states) > 1:
        layers = cross_model_similarity(states)
        result.update(cross_model=layers, divergence=summarise_divergence(layers))
    return result


def run_analyze(models: list[str], samples: Path, output: Path, num_samples: int = 64,
                seed: int = 0, quiet: bool = False) -> Path:
    """Compute the analysis, write ``analysis.json`` and the plots into ``output``; return it."""
    from recall_merge.errors import ConfigError, OutputError
    from recall_merge.io.atomic import write_json
    from recall_merge.provenance import versions
    from recall_merge.reports.plots import plot_analysis

    if num_samples < 2:
        raise ConfigError(f"--num-samples {num_samples} is too small", "use at least 2 samples")
    output = Path(output)
    if output.exists() and not output.is_dir():  # refused before the models are read
        raise OutputError(f"--output {str(output)[:200]} is a file, not a folder",
                          "give a folder path for the analysis (it is created if missing)")
    started = time.perf_counter()
    texts = choose_samples(read_samples(Path(samples), min_count=2, max_count=None), num_samples, seed)
    states, folders = pooled_states(list(models), texts, quiet)
    states_s = time.perf_counter() - started
    labels = model_labels(folders)
    analysis = {
        "models": folders, "labels": labels, "samples": str(samples), "num_samples": len(texts),
        "seed": seed, "max_length": MAX_LENGTH, "framing": "chat template, user turn",
        "pooling": "mean over tokens, padding excluded",
        "layers": "block j: adjacent = hidden_states[j] vs [j+1]; cross-model = hidden_states[j+1]",
        "num_blocks": int(states[0].shape[0] - 1),
        **analyse_states(states, labels),
        "versions": versions(),
    }
    output.mkdir(parents=True, exist_ok=True)
    analysis["figures"] = [path.name for path in plot_analysis(analysis, output)]
    analysis["timings"] = {"states_s": round(states_s, 2),
                           "total_s": round(time.perf_counter() - started, 2)}
    write_json(output / ANALYSIS_NAME, analysis, sort_keys=False)
    return output
