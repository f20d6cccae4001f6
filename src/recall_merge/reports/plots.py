"""Figures (PNG + SVG, matplotlib's headless Agg backend) for analyses, merges and continual runs.

Every public function takes the JSON-ready dict a command wrote (``analysis.json``,
``recall_report.json``, ``results.json``) and a folder, writes ``STEM.png`` and ``STEM.svg`` per
figure, and returns the paths written (PNG first, then SVG, figure by figure). Nothing is drawn
when the data has nothing to show (e.g. a classic merge has no per-layer α).

Names that come from the user (model folders, strategies, tasks) are drawn as plain text: every
label, title, tick label and legend entry that carries one goes through :func:`label`, so a
``$`` in a folder name is a dollar sign, not the start of matplotlib mathtext (which would fail to
parse, or typeset the name as a formula).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recall_merge.io.atomic import atomic_open

PNG_DPI = 100
FORMATS = ("png", "svg")
MAX_INCHES = 50.0  # per side: 5000 px at PNG_DPI, far below Agg's 2^16 px limit
MAX_LABEL_CHARS = 40
_formats: tuple[str, ...] = FORMATS


def plain(text: Any) -> str:
    """``text`` for a matplotlib Text shown literally: with no unescaped ``$`` there is no
    mathtext, and matplotlib turns each ``\\$`` back into ``$`` when it draws plain text."""
    return str(text).replace("$", r"\$")


def label(text: Any, limit: int = MAX_LABEL_CHARS) -> str:
    """A user's name as a plot label: shortened to ``limit`` characters, then made plain."""
    name = str(text)
    return plain(name if len(name) <= limit else name[:limit - 1] + "…")


def _figsize(width: float, height: float) -> tuple[float, float]:
    """A figure size capped at MAX_INCHES per side (many models or tasks must not make an image
    too large for Agg to allocate)."""
    return min(width, MAX_INCHES), min(height, MAX_INCHES)


def _pyplot():
    """matplotlib.pyplot on the Agg backend (imported lazily: it costs ~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # usetex off and parse_math on whatever the user's matplotlibrc says: label() relies on
    # matplotlib's own mathtext rules (LaTeX would choke on _, %, & and # in names).
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
                         "figure.dpi": PNG_DPI, "svg.hashsalt": "recall-merge",
                         "text.usetex": False, "text.parse_math": True})
    return plt


@contextlib.contextmanager
def only_formats(*formats: str) -> Iterator[None]:
    """Write only these formats inside the block (the HTML page needs PNG alone)."""
    global _formats
    previous, _formats = _formats, tuple(formats)
    try:
        yield
    finally:
        _formats = previous


def save_figure(fig, folder: Path, stem: str) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg into ``folder`` (each complete or not at all) and close
    the figure."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        if "png" in _formats:
            paths.append(folder / f"{stem}.png")
            with atomic_open(paths[-1], "wb") as handle:
                fig.savefig(handle, format="png", dpi=PNG_DPI, bbox_inches="tight",
                            metadata={"Software": None})
        if "svg" in _formats:
            paths.append(folder / f"{stem}.svg")
            with atomic_open(paths[-1], "wb") as handle:
                fig.savefig(handle, format="svg", bbox_inches="tight",
                            metadata={"Date": None, "Creator": None})
    finally:
        plt.close(fig)
    return paths


def _heatmap(ax, values: list[list[float]], *, xlabels: list[str], ylabels: list[str],
             vmin: float, vmax: float, cmap: str = "viridis", annotate: bool = True,
             fmt: str = "{:.2f}"):
    """One annotated heatmap on ``ax``; returns the image for a colour bar."""
    import numpy as np

    data = np.array([[math.nan if v is None else v for v in row] for row in values], dtype=float)
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(xlabels)), labels=xlabels)
    ax.set_yticks(range(len(ylabels)), labels=ylabels)
    if annotate:
        middle = (vmin + vmax) / 2
        for (row, col), value in np.ndenumerate(data):
            if not math.isnan(value):
                ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize=7,
                        color="white" if value < middle else "black")
    return image


def _integer_ticks(ax) -> None:
    """Layer indices are whole numbers: no 0.5 ticks on short axes."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _depth_picks(num_layers: int, count: int = 4) -> list[int]:
    """``count`` layer indices spread from the first to the last (no repeats)."""
    if num_layers <= count:
        return list(range(num_layers))
    return sorted({round(i * (num_layers - 1) / (count - 1)) for i in range(count)})


def _span(values: list[float], top: float = 1.0) -> tuple[float, float]:
    """Colour range that still separates values crowded near ``top`` (e.g. RBF in 0.95–1)."""
    low = min(values)
    if low >= top:
        return top - 0.01, top
    return low - 0.05 * (top - low), top


# --- representation analysis -----------------------------------------------------------------

def plot_adjacent(analysis: dict[str, Any], folder: Path) -> list[Path]:
    """RBF and CKA between each block's input and output, one line per model."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharex=True)
    for index, entry in enumerate(analysis["adjacent"]):
        blocks = [p["block"] for p in entry["pairs"]]
        style = {"lw": 2.2, "color": "black", "zorder": 3} if index == 0 else {"lw": 1.0, "alpha": 0.8}
        for ax, key in zip(axes, ("rbf", "cka"), strict=True):
            ax.plot(blocks, [p[key] for p in entry["pairs"]], marker="o", ms=3,
                    label=label(entry["model"]), **style)
    axes[0].set_title("adjacent layers: aligned RBF (median σ per pair)")
    axes[1].set_title("adjacent layers: linear CKA")
    for ax in axes:
        ax.set_xlabel("block j  (hidden_states[j] vs [j+1])")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("similarity")
    axes[1].legend(fontsize=7, loc="lower center")
    fig.tight_layout()
    return save_figure(fig, folder, "adjacent_similarity")


def plot_cross_model(analysis: dict[str, Any], folder: Path) -> list[Path]:
    """Each expert against the base, and experts against each other, block by block."""
    plt = _pyplot()
    layers = analysis["cross_model"]
    blocks = [layer["block"] for layer in layers]
    experts = analysis["labels"][1:]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharex=True)
    panels = (("rbf_to_base", "rbf_between_experts", "aligned RBF (median σ per layer)"),
              ("cka_to_base", "cka_between_experts", "linear CKA"),
              ("relative_shift_from_base", None, "relative shift ‖h^k − h^base‖ / ‖h^base‖"))
    for ax, (key, between, title) in zip(axes, panels, strict=True):
        for k, name in enumerate(experts):
            ax.plot(blocks, [layer[key][k] for layer in layers], marker="o", ms=3, lw=1.2,
                    label=label(name) + " vs base")
        if between and layers[0][between] is not None and len(experts) > 1:
            ax.plot(blocks, [layer[between] for layer in layers], color="black", ls="--", lw=1.5,
                    label="between experts (mean)")
        ax.set_title(title)
        ax.set_xlabel("block j  (hidden_states[j+1])")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("similarity")
    axes[2].set_ylabel("relative distance")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, folder, "cross_model_similarity")


def plot_matrices(matrices: list[list[list[float]]], layers: list[int], labels: list[str],
                  folder: Path, stem: str, title: str) -> list[Path]:
    """K×K similarity matrices of a few layers side by side, on one colour scale."""
    plt = _pyplot()
    values = [v for matrix in matrices for row in matrix for v in row]
    vmin, vmax = _span(values)
    size = max(2.6, 0.5 * len(labels) + 1.4)
    fig, axes = plt.subplots(1, len(matrices), figsize=_figsize(size * len(matrices) + 1, size),
                             squeeze=False)
    image = None
    short = [label(name, 12) for name in labels]
    for index, (ax, matrix, layer) in enumerate(zip(axes[0], matrices, layers, strict=True)):
        image = _heatmap(ax, matrix, xlabels=short, ylabels=short, vmin=vmin, vmax=vmax,
                         fmt="{:.3f}", annotate=len(labels) <= 8)
        ax.set_title(f"S^({layer})")
        ax.tick_params(axis="x", labelrotation=45)
        if index:
            ax.tick_params(axis="y", labelleft=False)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(plain(title), y=1.02)
    return save_figure(fig, folder, stem)


def plot_analysis(analysis: dict[str, Any], folder: Path) -> list[Path]:
    """Every figure of ``recall analyze``."""
    paths = plot_adjacent(analysis, folder)
    if analysis.get("cross_model"):
        layers = analysis["cross_model"]
        picks = _depth_picks(len(layers))
        paths += plot_cross_model(analysis, folder)
        paths += plot_matrices([layers[j]["rbf"] for j in picks], picks, analysis["labels"], folder,
                               "cross_model_matrices", "aligned RBF between models at a few depths")
    return paths


# --- merges ----------------------------------------------------------------------------------

def merge_labels(report: dict[str, Any]) -> list[str]:
    """'M0 base', 'M1 NAME', … for the models of a merge report (as text: pass each through
    :func:`plain` before drawing it)."""
    labels = []
    for k, model in enumerate(report.get("models", [])):
        name = "base" if k == 0 else Path(model).name
        labels.append(f"M{k} {name if len(name) <= 14 else name[:13] + '…'}")
    return labels


def plot_alpha_heatmap(report: dict[str, Any], folder: Path) -> list[Path]:
    """α_j^(k): models on the rows, layers on the columns."""
    plt = _pyplot()
    layers = report["layers"]
    alpha = [[layer["alpha"][k] for layer in layers] for k in range(len(layers[0]["alpha"]))]
    labels = [plain(name) for name in merge_labels(report) or [f"M{k}" for k in range(len(alpha))]]
    flat = [v for row in alpha for v in row]
    fig, ax = plt.subplots(figsize=_figsize(min(2.5 + 0.38 * len(layers), 15), 1.3 + 0.45 * len(alpha)))
    image = _heatmap(ax, alpha, xlabels=[str(j) for j in range(len(layers))], ylabels=labels,
                     vmin=min(flat), vmax=max(max(flat), min(flat) + 1e-6),
                     annotate=len(layers) * len(alpha) <= 200)
    ax.set_xlabel("layer (decoder block) j")
    ax.set_title("merge weights α_j^(k)  (each column sums to 1)")
    fig.colorbar(image, ax=ax, shrink=0.9)
    return save_figure(fig, folder, "alpha_heatmap")


def plot_similarity_and_bandwidth(report: dict[str, Any], folder: Path) -> list[Path]:
    """M_N's similarity row S^(j)[N, k] per layer, and the bandwidth σ_j."""
    plt = _pyplot()
    layers = report["layers"]
    labels = merge_labels(report) or [f"M{k}" for k in range(len(layers[0]["similarity"]))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    blocks = list(range(len(layers)))
    for k, name in enumerate(labels):
        axes[0].plot(blocks, [layer["similarity"][k] for layer in layers], marker="o", ms=3,
                     label=plain(name))
    axes[0].set_title("similarity to M_N per layer, S^(j)[N, k]")
    axes[0].legend(fontsize=7)
    bandwidths = [layer.get("bandwidth") for layer in layers]
    if all(b is not None for b in bandwidths):
        axes[1].plot(blocks, bandwidths, marker="o", ms=3, color="tab:red")
        axes[1].set_title("RBF bandwidth σ_j")
    else:
        axes[1].text(0.5, 0.5, "no bandwidth (kernel is not RBF)", ha="center", transform=axes[1].transAxes)
    for ax in axes:
        ax.set_xlabel("layer j")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, folder, "similarity_per_layer")


def plot_merge_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """Figures of one merge (``recall_report.json``); none for methods without per-layer α."""
    layers = report.get("layers")
    if not layers or "alpha" not in layers[0]:
        return []
    folder = Path(folder)
    paths = plot_alpha_heatmap(report, folder)
    if "similarity_matrix" in layers[0]:
        picks = _depth_picks(len(layers))
        paths += plot_matrices([layers[j]["similarity_matrix"] for j in picks], picks,
                               merge_labels(report) or [f"M{k}" for k in range(len(layers[0]["alpha"]))],
                               folder, "similarity_matrices", "S^(j) between models at a few depths")
    if "similarity" in layers[0]:
        paths += plot_similarity_and_bandwidth(report, folder)
    return paths


# --- continual runs --------------------------------------------------------------------------

def finished_methods(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The methods of a continual run that produced an accuracy matrix (failed ones are left out)."""
    return {name: entry for name, entry in results.get("methods", {}).items() if "R" in entry}


def plot_accuracy_matrices(results: dict[str, Any], folder: Path) -> list[Path]:
    """R[i][j] of every method as a grid of heatmaps on one colour scale."""
    plt = _pyplot()
    methods = finished_methods(results)
    if not methods:
        return []
    tasks = [label(t["name"], 14) for t in results["tasks"]]
    rows = ["base"] + [f"step {i}" for i in range(1, len(tasks) + 1)]
    values = [v for entry in methods.values() for row in entry["R"] for v in row
              if v is not None and math.isfinite(v)]
    vmin, vmax = min([0.0, *values]), max([1.0, *values])
    columns = min(3, len(methods))
    count = math.ceil(len(methods) / columns)
    cell = 0.55
    width = max(3.2, 1.6 + cell * len(tasks))
    height = max(2.4, 1.2 + cell * len(rows))
    fig, axes = plt.subplots(count, columns, figsize=_figsize(width * columns + 1, height * count),
                             squeeze=False)
    image = None
    for index, (ax, (name, entry)) in enumerate(zip(axes.flat, methods.items(), strict=False)):
        image = _heatmap(ax, entry["R"], xlabels=tasks, ylabels=rows, vmin=vmin, vmax=vmax, cmap="magma")
        ax.set_title(label(name), fontsize=9)
        ax.tick_params(axis="x", labelrotation=35)
        if index % columns:
            ax.tick_params(axis="y", labelleft=False)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7, label="score")
    return save_figure(fig, folder, "accuracy_matrices")


def plot_ap_bwt(results: dict[str, Any], folder: Path) -> list[Path]:
    """AP and BWT per method as horizontal bars (BWT n/a with a single task)."""
    plt = _pyplot()
    methods = finished_methods(results)
    if not methods:
        return []
    names = list(methods)
    fig, axes = plt.subplots(1, 2, figsize=_figsize(11, 0.9 + 0.32 * len(names)), sharey=True)
    for ax, key, colour in zip(axes, ("AP", "BWT"), ("tab:blue", "tab:orange"), strict=True):
        values = [methods[n].get(key) for n in names]
        shown = [0.0 if v is None else v for v in values]
        bars = ax.barh(range(len(names)), shown, color=colour)
        for bar, value in zip(bars, values, strict=True):
            text = "n/a" if value is None else f"{value:+.3f}" if key == "BWT" else f"{value:.3f}"
            ax.annotate(text, (bar.get_width(), bar.get_y() + bar.get_height() / 2), fontsize=7,
                        xytext=(3 if bar.get_width() >= 0 else -3, 0), textcoords="offset points",
                        ha="left" if bar.get_width() >= 0 else "right", va="center")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title("AP (higher is better)" if key == "AP" else "BWT (closer to 0 or above is better)")
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.2)
    axes[0].set_yticks(range(len(names)), labels=[label(name) for name in names])
    axes[0].invert_yaxis()
    fig.tight_layout()
    return save_figure(fig, folder, "ap_bwt")


def plot_continual_results(results: dict[str, Any], folder: Path) -> list[Path]:
    """Figures of one continual run (``results.json``)."""
    folder = Path(folder)
    return plot_accuracy_matrices(results, folder) + plot_ap_bwt(results, folder)
