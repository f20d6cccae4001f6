"""The model card (README.md) written into every merged folder, from the merge's report alone.

Hugging Face reads the YAML front matter (``base_model``, ``tags``, ``library_name``); the body says
how the model was made: method, models, parameters, a short summary of the weights the method
applied, and the command that rebuilds it. It never copies the base's card: that card describes
another model.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

_MAX_LAYER_ROWS = 48  # beyond this, the per-block table is summarised (min / mean / max)


def model_card(report: dict[str, Any]) -> str:
    config = report.get("config", {})
    method = str(report.get("method", "unknown"))
    models = [str(model) for model in report.get("models", [])]
    kinds = report.get("model_kinds", [])
    front = {"base_model": str(config.get("base", models[0] if models else "")),
             "library_name": "transformers",
             "tags": ["merge", "recall-merge", method]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {_name(config)}", "",
             f"This model was merged with recall-merge "
             f"{report.get('versions', {}).get('recall_merge', '')} using **{method}**.", "",
             "## Models", "", "| role | model | kind |", "|---|---|---|"]
    for index, model in enumerate(models):
        role = "base (M_0)" if index == 0 else f"expert M_{index}"
        kind = kinds[index] if index < len(kinds) else ""
        lines.append(f"| {role} | `{_cell(model)}` | {kind} |")
    lines += ["", "## Parameters", "", "```json",
              json.dumps(report.get("parameters", {}), indent=2, sort_keys=True), "```", ""]
    lines += _weights_summary(report)
    lines += ["## Reproduce", "", "Save this config as `merge.yaml` and run `recall merge merge.yaml`:",
              "", "```yaml", yaml.safe_dump(_reproducible(config), sort_keys=False).strip(), "```", "",
              f"Seed {report.get('seed', config.get('seed', 0))}; the full record (timings, library "
              "versions, per-layer details) is in `recall_report.json` beside this card.", ""]
    return "\n".join(lines)


def _name(config: dict[str, Any]) -> str:
    output = str(config.get("output", "merged model")).rstrip("/")
    return output.rsplit("/", 1)[-1] or "merged model"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ")


def _reproducible(config: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "base", "models", "samples", "output", "seed", "dtype", "parameters")
    return {key: config[key] for key in keys if config.get(key) is not None}


def _weights_summary(report: dict[str, Any]) -> list[str]:
    """RECALL: its per-block α over M_0..M_N (what the merge actually applied)."""
    layers = report.get("layers")
    if not isinstance(layers, list) or not layers or "alpha" not in layers[0]:
        return []
    count = len(layers[0]["alpha"])
    header = " | ".join(f"α M_{k}" for k in range(count))
    lines = ["## Weights per block", "",
             f"RECALL's per-block weights α (variant `{report.get('variant', '')}`), from the "
             "representations of typical samples of the newest task:", "",
             f"| block | {header} |", "|---|" + "---|" * count]
    if len(layers) <= _MAX_LAYER_ROWS:
        for entry in layers:
            lines.append(f"| {entry.get('index')} | "
                         + " | ".join(f"{float(a):.3f}" for a in entry["alpha"]) + " |")
    else:
        for label, pick in (("min", min), ("max", max)):
            lines.append(f"| {label} | " + " | ".join(
                f"{pick(float(e['alpha'][k]) for e in layers):.3f}" for k in range(count)) + " |")
        lines.append("| mean | " + " | ".join(
            f"{sum(float(e['alpha'][k]) for e in layers) / len(layers):.3f}" for k in range(count)) + " |")
    return lines + [""]
