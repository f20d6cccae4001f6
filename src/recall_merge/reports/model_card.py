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
    sources = _hub_sources(report, len(models))
    as_lora = report.get("output_format") == "lora"
    base_source = sources[0] if sources else None
    base_name = base_source["id"] if base_source else str(config.get("base", models[0] if models else ""))
    front = {"base_model": base_name,
             "library_name": "peft" if as_lora else "transformers",
             "tags": ["merge", "recall-merge", method] + (["lora"] if as_lora else [])}
    made = ("merged with recall-merge {version} using **{method}** and written as one LoRA adapter "
            "on its base (load it with `peft.PeftModel.from_pretrained(base_model, this_folder)`)"
            if as_lora else "merged with recall-merge {version} using **{method}**")
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {_name(config)}", "",
             "This model was " + made.format(version=report.get("versions", {}).get("recall_merge", ""),
                                             method=method) + ".", "",
             "## Models", "", "| role | model | kind |", "|---|---|---|"]
    for index, model in enumerate(models):
        role = "base (M_0)" if index == 0 else f"expert M_{index}"
        kind = kinds[index] if index < len(kinds) else ""
        source = sources[index] if index < len(sources) else None
        shown = f"{source['id']}@{source['commit']}" if source else model
        lines.append(f"| {role} | `{_cell(shown)}` | {kind} |")
    if any(sources):
        lines += ["", "Models named `org/name@commit` came from the Hugging Face hub at that commit."]
    lines += ["", "## Parameters", "", "```json",
              json.dumps(report.get("parameters", {}), indent=2, sort_keys=True), "```", ""]
    lines += _weights_summary(report)
    lines += _lora_summary(report)
    lines += ["## Reproduce", "", "Save this config as `merge.yaml` and run `recall merge merge.yaml`:",
              "", "```yaml", yaml.safe_dump(_reproducible(config, sources), sort_keys=False).strip(), "```", "",
              f"Seed {report.get('seed', config.get('seed', 0))}; the full record (timings, library "
              "versions, per-layer details) is in `recall_report.json` beside this card.", ""]
    return "\n".join(lines)


def _name(config: dict[str, Any]) -> str:
    output = str(config.get("output", "merged model")).rstrip("/")
    return output.rsplit("/", 1)[-1] or "merged model"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ")


def _hub_sources(report: dict[str, Any], count: int) -> list[dict[str, str] | None]:
    """Per model, its hub id and commit when it came from the hub (report["hub"]), else None."""
    entries = report.get("hub")
    if not isinstance(entries, list):
        return [None] * count
    sources: list[dict[str, str] | None] = []
    for index in range(count):
        entry = entries[index] if index < len(entries) else None
        valid = (isinstance(entry, dict) and isinstance(entry.get("id"), str)
                 and isinstance(entry.get("commit"), str))
        sources.append({"id": entry["id"], "commit": entry["commit"]} if valid else None)
    return sources


def _reproducible(config: dict[str, Any], sources: list[dict[str, str] | None] | None = None,
                  ) -> dict[str, Any]:
    """The config that rebuilds the merge; models from the hub pinned to the commit used."""
    keys = ("method", "base", "models", "samples", "output", "seed", "dtype", "parameters",
            "output_format", "lora_output", "mergekit")
    kept = {key: config[key] for key in keys
            if config.get(key) is not None and not (key == "output_format" and config[key] == "full")}
    sources = sources or []
    pinned = [f"{source['id']}@{source['commit']}" if source else None for source in sources]
    if pinned and pinned[0] and "base" in kept:
        kept["base"] = pinned[0]
    if isinstance(kept.get("models"), list):
        kept["models"] = [pinned[k + 1] if k + 1 < len(pinned) and pinned[k + 1] else model
                          for k, model in enumerate(kept["models"])]
    return kept


def _lora_summary(report: dict[str, Any]) -> list[str]:
    """output_format: lora: the adapter's ranks and how close it is to the dense merge."""
    section = report.get("lora_output")
    if not isinstance(section, dict) or not isinstance(section.get("modules"), dict):
        return []
    modules = section["modules"]
    ranks = [entry.get("rank") for entry in modules.values() if isinstance(entry, dict)]
    ranks = [rank for rank in ranks if isinstance(rank, int)]
    error = section.get("max_relative_error")
    lines = ["## LoRA adapter", "",
             f"{len(modules)} modules as LoRA factors (rank {min(ranks, default=0)} to "
             f"{max(ranks, default=0)})"]
    if isinstance(error, int | float):
        lines[-1] += (f"; largest relative Frobenius error against the dense merge {float(error):.3g} "
                      "(0: exact)")
    saved = section.get("modules_to_save")
    if isinstance(saved, list) and saved:
        lines[-1] += f"; {len(saved)} modules stored whole (modules_to_save)"
    lines[-1] += ". Per-module ranks and errors are in `recall_report.json`."
    return lines + [""]


def extraction_card(report: dict[str, Any], model_ref: str, base_ref: str) -> str:
    """The card of a ``recall extract-lora`` output: a PEFT adapter on ``base_ref``."""
    sources = _hub_sources(report, 2)
    base_name = sources[0]["id"] if sources[0] else str(base_ref)
    shown = [f"{s['id']}@{s['commit']}" if s else str(ref) for s, ref in zip(sources, (base_ref, model_ref),
                                                                              strict=True)]
    front = {"base_model": base_name, "library_name": "peft", "tags": ["lora", "recall-merge", "extract-lora"]}
    modules = report.get("modules", {}) if isinstance(report.get("modules"), dict) else {}
    error = report.get("max_relative_error")
    return "\n".join([
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# LoRA extracted from {_cell(shown[1])}", "",
        f"A rank-{report.get('rank')} LoRA adapter on `{_cell(shown[0])}` that approximates "
        f"`{_cell(shown[1])}`: per linear module the truncated SVD of the difference of the two weights "
        "(as mergekit-extract-lora does); embeddings and norms are stored whole (modules_to_save).", "",
        f"{len(modules)} modules; largest relative Frobenius error "
        f"{float(error) if isinstance(error, int | float) else float('nan'):.3g}. "
        "Per-module ranks and errors are in `recall_report.json`.", "",
        "Rebuild: `recall extract-lora " + _cell(shown[1]) + " --base " + _cell(shown[0])
        + f" --rank {report.get('rank')} --output OUT`", ""])


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
