"""`recall report RUN_DIR`: one self-contained HTML page that explains a merge or a continual run.

The page needs nothing but itself: the CSS is inline, every figure is a PNG embedded as a
base64 ``data:`` URI, and there are no scripts, fonts or links to other hosts, so it opens offline
and can be mailed or archived as one file. A merge folder is recognised by ``recall_report.json``,
a continual run folder by ``results.json``.

Sections (their ``id`` in brackets): merge — overview, configuration, typical samples, weights,
metrics, timings; continual run — overview, configuration, tasks, metrics, weights, typical
samples, timings.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from recall_merge.errors import RecallError
from recall_merge.reports import plots

REPORT_NAME = "report.html"
MERGE_REPORT = "recall_report.json"
CONTINUAL_RESULTS = "results.json"
MAX_SAMPLE_CHARS = 400

_STYLE = """
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;opacity:.85}
nav{padding:8px 32px;background:#e7ecf3;position:sticky;top:0}
nav a{margin-right:14px;color:#1f3a5f;text-decoration:none;font-weight:600}
main{padding:8px 32px 32px;max-width:1250px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:4px 20px 16px;margin:16px 0}
h2{color:#1f3a5f;border-bottom:2px solid #e7ecf3;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #dde2e8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f7}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;border:1px solid #dde2e8;padding:8px;overflow:auto;max-height:360px;font-size:12px}
figure{margin:12px 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:12px}
.note{color:#555}
.scroll{max-height:300px;overflow:auto;border-bottom:1px solid #dde2e8}
details summary{cursor:pointer;font-weight:600;margin:6px 0}
footer{color:#777;font-size:12px;padding:0 32px 24px}
"""


class ReportError(RecallError):
    """The folder given to `recall report` is neither a merge output nor a continual run."""


# --- small HTML helpers ----------------------------------------------------------------------

def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt_number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return esc(value)
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def table(headers: list[str], rows: Iterable[Iterable[Any]], numeric_from: int = 1) -> str:
    """An HTML table; cells from column ``numeric_from`` on are right-aligned numbers."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            if index >= numeric_from and (cell is None or isinstance(cell, int | float)):
                cells.append(f'<td class="num">{fmt_number(cell)}</td>')
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_value_grid(values: dict[str, Any], columns: int = 3) -> str:
    """A compact table of ``key: value`` pairs, ``columns`` pairs per row (values as JSON)."""
    items = sorted(values.items())
    rows = []
    for start in range(0, len(items), columns):
        cells = "".join(f"<th>{esc(k)}</th><td>{esc(json.dumps(v))}</td>" for k, v in items[start:start + columns])
        rows.append(f"<tr>{cells}</tr>")
    return f"<table>{''.join(rows)}</table>"


def scrolled(content: str) -> str:
    return f'<div class="scroll">{content}</div>'


def section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{esc(section_id)}"><h2>{esc(title)}</h2>{body}</section>'


def paragraph(text: str) -> str:
    return f"<p>{text}</p>"


def json_block(data: Any) -> str:
    return f"<pre>{esc(json.dumps(data, indent=2, sort_keys=True, default=str))}</pre>"


def embed_figure(png: Path, caption: str) -> str:
    """A <figure> with the PNG inline as a data URI."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def render_figures(draw: Callable[[Path], list[Path]], captions: dict[str, str]) -> str:
    """Draw figures into a temporary folder and embed every PNG, captioned by its file stem."""
    with tempfile.TemporaryDirectory(prefix="recall-report-") as tmp, plots.only_formats("png"):
        paths = [p for p in draw(Path(tmp)) if p.suffix == ".png"]
        return "".join(embed_figure(p, captions.get(p.stem, p.stem.replace("_", " "))) for p in paths)


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]], version: str) -> str:
    """The whole document from (id, title, body) sections."""
    links = "".join(f'<a href="#{esc(sid)}">{esc(name)}</a>' for sid, name, _ in sections)
    body = "".join(section(sid, name, content) for sid, name, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p>"
            f"</header><nav>{links}</nav><main>{body}</main><footer>Written by recall-merge {esc(version)}"
            " (`recall report`). Self-contained: figures are embedded, nothing is loaded from the network."
            "</footer></body></html>\n")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ReportError(f"cannot read {path}: {error}", "re-run the merge or the continual run") from None


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recall-merge")
    except PackageNotFoundError:
        return "(not installed)"


# --- merge pages ----------------------------------------------------------------------------

MERGE_CAPTIONS = {
    "alpha_heatmap": "α_j^(k): the weight of model k in layer j (softmax of M_N's similarity row / τ)",
    "similarity_matrices": "S^(j): RBF similarity between the models' pooled representations at a few depths",
    "similarity_per_layer": "left: S^(j)[N, k], M_N's row that the softmax turns into α; right: the RBF bandwidth σ_j",
}


def _model_rows(report: dict[str, Any]) -> list[list[Any]]:
    kinds = report.get("model_kinds") or ["?"] * len(report.get("models", []))
    return [[f"M{k}", kind, model] for k, (model, kind) in enumerate(zip(report.get("models", []), kinds,
                                                                           strict=False))]


def explain_merge(report: dict[str, Any]) -> str:
    """A few sentences saying what this merge did, with its own numbers."""
    method = report.get("method", "?")
    models = report.get("models", [])
    params = report.get("parameters", {})
    text = (f"Method <b>{esc(method)}</b> merged {len(models)} models (M0 = base, M1…M{len(models) - 1}"
            f" fine-tuned from it) with {report.get('num_layers', '?')} decoder layers, seed "
            f"{esc(report.get('seed'))}.")
    if report.get("layers") and "alpha" in report["layers"][0]:
        text += (f" RECALL picked {len(report.get('typical_samples', []))} typical samples of the newest "
                 f"task (K-means in M_N's space), fed them to every model, compared the models layer by "
                 f"layer with the {esc(params.get('kernel', 'rbf'))} kernel ({esc(params.get('aggregation', ''))}"
                 f", bandwidth {esc(params.get('bandwidth', ''))}) and turned M_N's similarity row into "
                 f"weights α_j = softmax(S^(j)[N, :] / τ) with τ = {esc(params.get('temperature', ''))}"
                 f" (variant {esc(report.get('variant', params.get('variant', '')))}).")
    else:
        text += " This method works tensor by tensor and uses no representations or typical samples."
    return paragraph(text)


def merge_overview(report: dict[str, Any], run_dir: Path) -> str:
    return (explain_merge(report) + table(["model", "kind", "folder"], _model_rows(report), numeric_from=9)
            + paragraph(f"Output folder: <code>{esc(run_dir)}</code>; files: "
                        f"{esc(', '.join(report.get('output_files', [])))}"))


def merge_configuration(report: dict[str, Any]) -> str:
    parameters = report.get("parameters", {})
    versions = report.get("versions", {})
    return ("<h3>Method parameters (defaults filled in)</h3>" + key_value_grid(parameters)
            + "<details><summary>Config as given</summary>" + json_block(report.get("config", {}))
            + "</details><details><summary>Versions</summary>" + key_value_grid(versions)
            + "</details>")


def typical_samples_html(samples: list[dict[str, Any]] | None) -> str:
    if not samples:
        return paragraph('<span class="note">No typical samples: this method does not read the data.</span>')
    rows = []
    for sample in samples:
        text = str(sample.get("text", ""))
        rows.append([sample.get("index"), text if len(text) <= MAX_SAMPLE_CHARS else text[:MAX_SAMPLE_CHARS] + "…"])
    return (paragraph(f"{len(samples)} samples, one per K-means cluster (the sample nearest each centroid); "
                      "index = line in the sample file (0-based).")
            + scrolled(table(["index", "text"], rows, numeric_from=9)))


def merge_weights(report: dict[str, Any]) -> str:
    layers = report.get("layers")
    if not layers or "alpha" not in layers[0]:
        return paragraph('<span class="note">This method has no per-layer weights; its parameters are in '
                         "the configuration section.</span>")
    labels = plots.merge_labels(report) or [f"M{k}" for k in range(len(layers[0]["alpha"]))]
    figures = render_figures(lambda folder: plots.plot_merge_report(report, folder), MERGE_CAPTIONS)
    rows = [[j] + list(layer["alpha"]) for j, layer in enumerate(layers)]
    rows.append(["embeddings"] + list(report.get("embedding_alpha") or [None] * len(labels)))
    rows.append(["norm, lm_head"] + list(report.get("head_alpha") or [None] * len(labels)))
    return (figures + "<details><summary>α per layer (table)</summary>"
            + table(["layer"] + labels, rows) + "</details>")


def alpha_summary(layers: list[dict[str, Any]], labels: list[str]) -> list[list[Any]]:
    """Per model: mean, min and max of α over layers, and mean similarity to M_N."""
    rows = []
    for k, label in enumerate(labels):
        alphas = [layer["alpha"][k] for layer in layers]
        similarities = [layer["similarity"][k] for layer in layers if "similarity" in layer]
        rows.append([label, sum(alphas) / len(alphas), min(alphas), max(alphas),
                     sum(similarities) / len(similarities) if similarities else None])
    return rows


def merge_metrics(report: dict[str, Any]) -> str:
    layers = report.get("layers")
    if not layers or "alpha" not in layers[0]:
        return paragraph('<span class="note">A merge on its own has no task scores (a continual run '
                         "scores its merges); this method records no per-layer statistics.</span>")
    labels = plots.merge_labels(report) or [f"M{k}" for k in range(len(layers[0]["alpha"]))]
    uniform = 1 / len(labels)
    newest = [layer["alpha"][-1] for layer in layers]
    return (paragraph("A merge on its own has no task scores (a continual run scores its merges). What it "
                      f"measured: α per model over the layers (uniform would be {uniform:.3f}) and the "
                      "similarity S^(j)[N, k] it was computed from.")
            + table(["model", "mean α", "min α", "max α", "mean S[N, k]"], alpha_summary(layers, labels))
            + paragraph(f"M_N's weight ranges from {min(newest):.4f} (layer {newest.index(min(newest))}) "
                        f"to {max(newest):.4f} (layer {newest.index(max(newest))})."))


def timings_html(run: dict[str, Any]) -> str:
    timings = run.get("timings", {})
    rows = [[name, value] for name, value in timings.items()]
    rss = run.get("peak_rss_mb", {})
    return (table(["stage", "seconds"], rows)
            + table(["peak resident memory", "MB"], [[k, v] for k, v in rss.items()]))


def merge_page(run_dir: Path) -> str:
    report = _read_json(run_dir / MERGE_REPORT)
    sections = [
        ("overview", "Overview", merge_overview(report, run_dir)),
        ("configuration", "Configuration", merge_configuration(report)),
        ("typical-samples", "Typical samples", typical_samples_html(report.get("typical_samples"))),
        ("weights", "Weights", merge_weights(report)),
        ("metrics", "Metrics", merge_metrics(report)),
        ("timings", "Timings", timings_html(report.get("run", {}))),
    ]
    return page(f"Merge report: {report.get('method', '?')}", str(run_dir), sections, _package_version())


# --- continual pages ------------------------------------------------------------------------

CONTINUAL_CAPTIONS = {
    "accuracy_matrices": "R[i][j]: score on task j (columns) after step i (rows; 'base' = untouched model)",
    "ap_bwt": "AP = mean score after the last step; BWT = mean change on earlier tasks since they were learned",
}


def slug(text: str) -> str:
    """The folder name the continual runner gives a strategy (same rule as the runner)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def merge_steps(run_dir: Path, method: str) -> list[tuple[int, Path]]:
    """(step, folder) of each merge of a strategy that has a recall_report.json, by step."""
    root = run_dir / "strategies" / slug(method)
    found = []
    for path in root.glob(f"step*/{MERGE_REPORT}"):
        suffix = path.parent.name[len("step"):]
        if suffix.isdigit():
            found.append((int(suffix), path.parent))
    return sorted(found)


def continual_overview(results: dict[str, Any], run_dir: Path) -> str:
    methods = plots.finished_methods(results)
    failed = sorted(set(results.get("methods", {})) - set(methods))
    text = (f"A continual run over {len(results.get('tasks', []))} tasks in order, {len(methods)} "
            f"strategies finished, seed {esc(results.get('seed'))}, model "
            f"<code>{esc(results.get('config', {}).get('model', '?'))}</code>. After each step every strategy's "
            "model is scored on every task; the metrics follow from that accuracy matrix R.")
    if methods:
        best = max(methods, key=lambda name: methods[name]["AP"])
        text += f" Highest AP: <b>{esc(best)}</b> ({methods[best]['AP']:.3f})."
    if failed:
        text += f" Failed: {esc(', '.join(failed))} (see metrics)."
    return paragraph(text) + paragraph(f"Run folder: <code>{esc(run_dir)}</code>")


def continual_configuration(results: dict[str, Any]) -> str:
    return (json_block(results.get("config", {})) + "<details><summary>Versions</summary>"
            + key_value_grid(results.get("versions", {})) + "</details>")


def continual_tasks(results: dict[str, Any]) -> str:
    rows = [[i, t.get("name"), t.get("kind"), t.get("metric"), "yes" if t.get("synthetic") else "no",
             t.get("num_train"), t.get("num_eval")] for i, t in enumerate(results.get("tasks", []), 1)]
    return table(["step", "task", "kind", "metric", "synthetic", "train items", "eval items"], rows,
                 numeric_from=5)


def continual_metrics(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results.get("methods", {}).items():
        if "R" not in entry:
            rows.append([name, None, None, None, None, f"failed: {entry.get('error', '')[:200]}"])
            continue
        rows.append([name, entry.get("AP"), entry.get("BWT"), entry.get("FWT"),
                     entry.get("average_forgetting"), "yes" if entry.get("uses_old_data") else "no"])
    figures = render_figures(lambda folder: plots.plot_continual_results(results, folder), CONTINUAL_CAPTIONS)
    return (table(["strategy", "AP", "BWT", "FWT", "mean forgetting", "old data"], rows)
            + paragraph(f'<span class="note">{esc(results.get("normalisation", ""))}</span>') + figures)


def _merge_reports(run_dir: Path, results: dict[str, Any]) -> list[tuple[str, int, Path, dict[str, Any]]]:
    """(strategy, step, folder, report) of every merge of the run."""
    found = []
    for name, entry in results.get("methods", {}).items():
        if entry.get("kind", "merge") != "merge":
            continue
        for step, folder in merge_steps(run_dir, name):
            found.append((name, step, folder, _read_json(folder / MERGE_REPORT)))
    return found


def continual_weights(merges: list[tuple[str, int, Path, dict[str, Any]]]) -> str:
    shown = [(name, step, report) for name, step, _, report in merges
             if report.get("layers") and "alpha" in report["layers"][0]]
    if not shown:
        return paragraph('<span class="note">No merge of this run has per-layer weights (no RECALL '
                         "strategy, or no merge finished).</span>")
    last_step = {name: step for name, step, _ in shown}
    parts = [paragraph("α per layer and model of every RECALL merge; the last step of each strategy is "
                       "open, earlier steps are folded.")]
    for name, step, report in shown:
        figures = render_figures(lambda folder, r=report: plots.plot_merge_report(r, folder), MERGE_CAPTIONS)
        opened = " open" if step == last_step[name] else ""
        parts.append(f"<details{opened}><summary>{esc(name)}, step {step}</summary>{figures}</details>")
    return "".join(parts)


def continual_samples(merges: list[tuple[str, int, Path, dict[str, Any]]]) -> str:
    parts = []
    for name, step, _, report in merges:
        if report.get("typical_samples"):
            parts.append(f"<details><summary>{esc(name)}, step {step}: "
                         f"{len(report['typical_samples'])} samples</summary>"
                         f"{typical_samples_html(report['typical_samples'])}</details>")
    if not parts:
        return paragraph('<span class="note">No merge of this run chose typical samples.</span>')
    return paragraph("The newest task's typical samples that each RECALL merge used.") + "".join(parts)


def continual_timings(run_dir: Path, merges: list[tuple[str, int, Path, dict[str, Any]]]) -> str:
    rows = []
    for name, step, _, report in merges:
        timings = report.get("run", {}).get("timings", {})
        rows.append([f"{name}, step {step}", timings.get("plan_s"), timings.get("merge_s"),
                     timings.get("total_s"), report.get("run", {}).get("peak_rss_mb", {}).get("total")])
    training = []
    for path in sorted(run_dir.glob("**/training.json")):
        record = _read_json(path)
        training.append([str(path.parent.relative_to(run_dir)), record.get("loss"), record.get("examples")])
    html_text = (table(["merge", "plan s", "merge s", "total s", "peak RSS MB"], rows) if rows
                 else paragraph('<span class="note">No merge timings recorded.</span>'))
    if training:
        html_text += "<h3>Fine-tuning</h3>" + table(["model", "last-epoch loss", "examples"], training)
    return html_text


def continual_page(run_dir: Path) -> str:
    results = _read_json(run_dir / CONTINUAL_RESULTS)
    merges = _merge_reports(run_dir, results)
    sections = [
        ("overview", "Overview", continual_overview(results, run_dir)),
        ("configuration", "Configuration", continual_configuration(results)),
        ("tasks", "Tasks", continual_tasks(results)),
        ("metrics", "Metrics", continual_metrics(results)),
        ("weights", "Weights", continual_weights(merges)),
        ("typical-samples", "Typical samples", continual_samples(merges)),
        ("timings", "Timings", continual_timings(run_dir, merges)),
    ]
    return page("Continual-learning run", str(run_dir), sections, _package_version())


# --- entry point ----------------------------------------------------------------------------

def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write the HTML page of a merge or continual run folder; returns its path.

    Default output: ``run_dir/report.html``. Written to a temporary name first, then renamed.
    """
    run_dir = Path(run_dir)
    if (run_dir / MERGE_REPORT).is_file():
        document = merge_page(run_dir)
    elif (run_dir / CONTINUAL_RESULTS).is_file():
        document = continual_page(run_dir)
    elif not run_dir.exists():
        raise ReportError(f"folder {str(run_dir)!r} does not exist", "pass a merge output or continual run folder")
    else:
        raise ReportError(f"{run_dir} holds neither {MERGE_REPORT} (a merge) nor {CONTINUAL_RESULTS} "
                          "(a continual run)", "pass the output folder of `recall merge` or the run_dir "
                          "of `recall continual`, after it finished")
    output = Path(output) if output is not None else run_dir / REPORT_NAME
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_text(document, encoding="utf-8")
    partial.replace(output)
    return output
