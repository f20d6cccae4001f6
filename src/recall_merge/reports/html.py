"""`recall report RUN_DIR`: one self-contained HTML page that explains a merge or a continual run.

The page needs nothing but itself: the CSS is inline, every figure is a PNG embedded as a
base64 ``data:`` URI, and there are no scripts, fonts or links to other hosts, so it opens offline
and can be mailed or archived as one file. A merge folder is recognised by ``recall_report.json``,
a continual run folder by ``results.json``.

Everything the page shows comes from JSON files that may have been edited or damaged, so each
file is checked field by field before anything is drawn (a mismatch is a :class:`ReportError`
naming the field), and every value placed into the HTML goes through :func:`esc`.

Sections (their ``id`` in brackets): merge — overview, configuration, typical samples, weights,
metrics, timings; continual run — overview, configuration, tasks, metrics, weights, typical
samples, timings.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from recall_merge.errors import RecallError
from recall_merge.io import atomic
from recall_merge.reports import plots

REPORT_NAME = "report.html"
MERGE_REPORT = "recall_report.json"
CONTINUAL_RESULTS = "results.json"
MAX_SAMPLE_CHARS = 400
MAX_JSON_BYTES = 64 * 2**20  # a real report is well under a megabyte
MAX_JSON_DEPTH = 64  # nesting beyond this is no report (and would exhaust the recursion limit)
PLOT_LIMIT = 1e12  # matplotlib cannot lay out a colour bar or axis much beyond ±1e15

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
    """The folder given to `recall report` is not a finished merge or continual run, one of its
    JSON files is malformed, or the page cannot be written where asked."""


# --- small HTML helpers ----------------------------------------------------------------------
# Convention (tests/test_hostile_reports.py checks it on this file's source): every value put
# into an f-string that builds HTML is wrapped in esc() or fmt_number(), or is itself HTML built
# here, in a name ending in ``_html``. Only error messages are exempt: raise statements and the
# JSON checks (_Checker and the functions named *check*), which build no HTML.

def esc(value: Any) -> str:
    """``value`` as text that is safe anywhere in the page: element content and quoted attributes."""
    return html.escape(str(value), quote=True)


def fmt_number(value: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant digits ("n/a" for None), escaped like any other value."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return esc(value)
    return esc(f"{value:.{digits}g}" if isinstance(value, float) else value)


def table(headers: list[Any], rows: Iterable[Iterable[Any]], numeric_from: int = 1) -> str:
    """An HTML table; cells from column ``numeric_from`` on are right-aligned numbers."""
    head_html = "".join(f"<th>{esc(h)}</th>" for h in headers)
    rows_html = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            if index >= numeric_from and (cell is None or isinstance(cell, int | float)):
                cells.append(f'<td class="num">{fmt_number(cell)}</td>')
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        rows_html.append("<tr>" + "".join(cells) + "</tr>")
    body_html = "".join(rows_html)
    return f"<table><thead><tr>{head_html}</tr></thead><tbody>{body_html}</tbody></table>"


def key_value_grid(values: dict[str, Any], columns: int = 3) -> str:
    """A compact table of ``key: value`` pairs, ``columns`` pairs per row (values as JSON)."""
    items = sorted(values.items())
    rows = []
    for start in range(0, len(items), columns):
        cells_html = "".join(f"<th>{esc(k)}</th><td>{esc(json.dumps(v, default=str))}</td>"
                             for k, v in items[start:start + columns])
        rows.append(f"<tr>{cells_html}</tr>")
    rows_html = "".join(rows)
    return f"<table>{rows_html}</table>"


def scrolled(content_html: str) -> str:
    return f'<div class="scroll">{content_html}</div>'


def section(section_id: str, title: str, body_html: str) -> str:
    return f'<section id="{esc(section_id)}"><h2>{esc(title)}</h2>{body_html}</section>'


def paragraph(text_html: str) -> str:
    return f"<p>{text_html}</p>"


def note(text: str) -> str:
    """A grey paragraph of plain text."""
    return paragraph(f'<span class="note">{esc(text)}</span>')


def json_block(data: Any) -> str:
    return f"<pre>{esc(json.dumps(data, indent=2, sort_keys=True, default=str))}</pre>"


def embed_figure(png: Path, caption: str) -> str:
    """A <figure> with the PNG inline as a data URI."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{esc(data)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def render_figures(draw: Callable[[Path], list[Path]], captions: dict[str, str]) -> str:
    """Draw figures into a temporary folder and embed every PNG, captioned by its file stem."""
    with tempfile.TemporaryDirectory(prefix="recall-report-") as tmp, plots.only_formats("png"):
        paths = [p for p in draw(Path(tmp)) if p.suffix == ".png"]
        return "".join(embed_figure(p, captions.get(p.stem, p.stem.replace("_", " "))) for p in paths)


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]], version: str) -> str:
    """The whole document from (id, title, body HTML) sections."""
    links_html = "".join(f'<a href="#{esc(sid)}">{esc(name)}</a>' for sid, name, _ in sections)
    body_html = "".join(section(sid, name, content) for sid, name, content in sections)
    style_html = _STYLE  # a constant of this module; escaping would break its quoted font names
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{style_html}</style></head><body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p>"
            f"</header><nav>{links_html}</nav><main>{body_html}</main><footer>Written by recall-merge "
            f"{esc(version)} (`recall report`). Self-contained: figures are embedded, nothing is loaded "
            "from the network.</footer></body></html>\n")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recall-merge")
    except PackageNotFoundError:
        return "(not installed)"


# --- reading and checking the JSON files ----------------------------------------------------

_MISSING = object()
_SCALAR = (str, int, float, bool, type(None))


def _excerpt(value: Any, limit: int = 60) -> str:
    """A short ``repr`` of a user value for a message (control characters escaped)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short_path(path: Path | str) -> str:
    text = str(path)
    return text if len(text) <= 200 else "…" + text[-199:]


class _Checker:
    """Reads the fields of one JSON document, each against the type the page needs.

    A mismatch is a ReportError naming the file, the field (``layers[2].alpha``) and what it
    found; a field the page can do without gets a default when it is absent or null.
    """

    def __init__(self, source: Path, fix: str) -> None:
        self.source = source
        self.fix = fix

    @staticmethod
    def describe(value: Any) -> str:
        """What a JSON value is, in a few words (a user's text shortened)."""
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | str):
            return _excerpt(value)
        if isinstance(value, list):
            return f"a list of {len(value)}"
        if isinstance(value, dict):
            return "an object"
        return type(value).__name__

    def fail(self, where: str, expected: str, found: Any = _MISSING) -> NoReturn:
        found_text = "it is missing" if found is _MISSING else f"found {self.describe(found)}"
        raise ReportError(f"{_short_path(self.source)}: {where} must be {expected}; {found_text}",
                          self.fix)

    @staticmethod
    def at(where: str, key: str | int) -> str:
        """The name of ``where``'s field ``key`` (a user's key is quoted and shortened)."""
        if isinstance(key, int):
            return f"{where}[{key}]"
        if key.isidentifier() and len(key) <= 40:
            return f"{where}.{key}" if where else key
        return f"{where}[{_excerpt(key, 40)}]"

    def field(self, doc: dict[str, Any], key: str, where: str, default: Any = _MISSING) -> Any:
        """``doc[key]``; ``default`` when absent or null, a ReportError when required."""
        value = doc.get(key)
        if value is None and default is not _MISSING:
            return default
        if key not in doc:
            self.fail(self.at(where, key), "present")
        return value

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, "a JSON object", value)
        return value

    def sequence(self, value: Any, where: str, length: int | None = None, what: str = "items") -> list[Any]:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            self.fail(where, f"a list of {length} {what}" if length is not None else f"a list of {what}", value)
        return value

    def scalar(self, value: Any, where: str) -> Any:
        """Anything shown as text: a string, number, true/false or null (not a list or object)."""
        if not isinstance(value, _SCALAR):
            self.fail(where, "a string, number, true/false or null", value)
        return value

    def scalars(self, value: Any, where: str, length: int | None = None) -> list[Any]:
        items = self.sequence(value, where, length, "strings or numbers")
        return [self.scalar(item, f"{where}[{i}]") for i, item in enumerate(items)]

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            self.fail(where, "a string", value)
        return value

    def number(self, value: Any, where: str) -> float:
        """A finite number the plots can place on an axis."""
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or abs(value) > PLOT_LIMIT):
            self.fail(where, f"a finite number between -{PLOT_LIMIT:g} and {PLOT_LIMIT:g}", value)
        return float(value)

    def numbers(self, value: Any, where: str, length: int) -> list[float]:
        items = self.sequence(value, where, length, "numbers")
        return [self.number(item, f"{where}[{i}]") for i, item in enumerate(items)]

    def score(self, value: Any, where: str) -> float | None:
        """A score of a continual run: a number, or null for one not measured. The runner may
        write NaN for a score it could not compute; that is shown as "n/a" too."""
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return None if value is None else self.number(value, where)


def _check_depth(data: Any, checker: _Checker) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH (without recursing: the data is untrusted)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ReportError(f"{_short_path(checker.source)} is nested more than {MAX_JSON_DEPTH} "
                              "levels deep, which no report is", checker.fix)
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def _read_json(path: Path, fix: str) -> Any:
    """The parsed JSON of ``path``; any unreadable or oversized file is a ReportError."""
    where = _short_path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ReportError(f"{where} is {size / 2**20:.0f} MiB, far larger than any report",
                              fix)
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{where} is not UTF-8 text", fix) from None
    except OSError as error:
        raise ReportError(f"cannot read {where}: {error.strerror or error}", fix) from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, int digits limit, deep nesting
        raise ReportError(f"{where} is not valid JSON ({str(error)[:120]})", fix) from None
    _check_depth(data, _Checker(path, fix))
    return data


MERGE_FIX = ("pass the output folder of a finished `recall merge`; if its recall_report.json was "
             "edited or damaged, run the merge again to write a fresh one")
TRAINING_FIX = "run the continual run again to rewrite it, or move the damaged file away"
CONTINUAL_FIX = ("pass the run_dir of a finished `recall continual`; if its results.json was edited "
                 "or damaged, run the same command again (it resumes) to write a fresh one")


def _check_layers(checker: _Checker, value: Any, count: int) -> list[dict[str, Any]]:
    """RECALL's per-layer records, checked for what the figures and tables read: α (and S, the
    S matrix, σ where layer 0 has them) with one entry per model. Layers without α (a classic
    method's settings) are not shown, so they come back as no layers."""
    layers = [checker.mapping(layer, f"layers[{j}]")
              for j, layer in enumerate(checker.sequence(value, "layers", what="objects"))]
    if not any("alpha" in layer for layer in layers):
        return []
    checked = []
    for j, layer in enumerate(layers):
        where = f"layers[{j}]"
        entry: dict[str, Any] = {"alpha": checker.numbers(checker.field(layer, "alpha", where),
                                                          f"{where}.alpha", count)}
        if "similarity" in layers[0]:
            entry["similarity"] = checker.numbers(checker.field(layer, "similarity", where),
                                                  f"{where}.similarity", count)
        if "similarity_matrix" in layers[0]:
            rows = checker.sequence(checker.field(layer, "similarity_matrix", where),
                                    f"{where}.similarity_matrix", count, "rows")
            entry["similarity_matrix"] = [checker.numbers(row, f"{where}.similarity_matrix[{i}]", count)
                                          for i, row in enumerate(rows)]
        bandwidth = layer.get("bandwidth")
        entry["bandwidth"] = None if bandwidth is None else checker.number(bandwidth, f"{where}.bandwidth")
        checked.append(entry)
    return checked


def _check_samples(checker: _Checker, value: Any) -> list[dict[str, Any]]:
    samples = []
    for i, sample in enumerate(checker.sequence(value, "typical_samples", what="objects")):
        where = f"typical_samples[{i}]"
        sample = checker.mapping(sample, where)
        text = checker.scalar(sample.get("text"), f"{where}.text")
        samples.append({"index": checker.scalar(sample.get("index"), f"{where}.index"),
                        "text": "" if text is None else str(text)})
    return samples


def check_merge_report(data: Any, source: Path) -> dict[str, Any]:
    """A merge report (``recall_report.json``) with every field the page reads checked, and
    defaults for the optional ones; raises ReportError naming the first bad field."""
    checker = _Checker(source, MERGE_FIX)
    doc = checker.mapping(data, "the file")
    models = [checker.text(model, f"models[{k}]")
              for k, model in enumerate(checker.sequence(checker.field(doc, "models", ""), "models",
                                                         what="model folders"))]
    if not models:
        checker.fail("models", "a list of at least one model folder", [])
    count = len(models)
    parameters = checker.mapping(checker.field(doc, "parameters", "", {}), "parameters")
    run = checker.mapping(checker.field(doc, "run", "", {}), "run")
    optional_alpha = {}
    for key in ("embedding_alpha", "head_alpha"):
        value = checker.field(doc, key, "", None)
        optional_alpha[key] = None if value is None else checker.scalars(value, key, count)
    return {
        "method": checker.text(checker.field(doc, "method", ""), "method"),
        "models": models,
        "model_kinds": checker.scalars(checker.field(doc, "model_kinds", "", ["?"] * count),
                                       "model_kinds", count),
        "num_layers": checker.scalar(checker.field(doc, "num_layers", "", "?"), "num_layers"),
        "seed": checker.scalar(doc.get("seed"), "seed"),
        "variant": checker.scalar(doc.get("variant"), "variant"),  # None: the parameters' variant
        "parameters": parameters,
        "config": checker.field(doc, "config", "", {}),
        "versions": checker.mapping(checker.field(doc, "versions", "", {}), "versions"),
        "output_files": checker.scalars(checker.field(doc, "output_files", "", []), "output_files"),
        "typical_samples": _check_samples(checker, checker.field(doc, "typical_samples", "", [])),
        "layers": _check_layers(checker, checker.field(doc, "layers", "", []), count),
        **optional_alpha,
        "run": {key: {name: checker.scalar(value, checker.at(f"run.{key}", name))
                      for name, value in checker.mapping(checker.field(run, key, "run", {}),
                                                         f"run.{key}").items()}
                for key in ("timings", "peak_rss_mb")},
    }


def check_continual_results(data: Any, source: Path) -> dict[str, Any]:
    """A continual run's ``results.json`` with every field the page and its figures read checked
    (R is (T + 1) × T for T tasks); raises ReportError naming the first bad field."""
    checker = _Checker(source, CONTINUAL_FIX)
    doc = checker.mapping(data, "the file")
    tasks = []
    for i, task in enumerate(checker.sequence(checker.field(doc, "tasks", ""), "tasks", what="tasks")):
        where = f"tasks[{i}]"
        task = checker.mapping(task, where)
        entry = {"name": checker.text(checker.field(task, "name", where), f"{where}.name")}
        for key in ("kind", "metric", "synthetic", "num_train", "num_eval"):
            entry[key] = checker.scalar(task.get(key), f"{where}.{key}")
        tasks.append(entry)
    if not tasks:
        checker.fail("tasks", "a list of at least one task", [])
    count = len(tasks)
    methods: dict[str, dict[str, Any]] = {}
    for name, raw in checker.mapping(checker.field(doc, "methods", ""), "methods").items():
        where = checker.at("methods", name)
        raw = checker.mapping(raw, where)
        entry: dict[str, Any] = {"kind": checker.scalar(checker.field(raw, "kind", where, "merge"),
                                                        f"{where}.kind")}
        if "R" in raw:
            rows = checker.sequence(raw["R"], f"{where}.R", count + 1, "rows (base, then one per task)")
            entry["R"] = [[checker.score(value, f"{where}.R[{i}][{j}]")
                           for j, value in enumerate(checker.sequence(row, f"{where}.R[{i}]", count,
                                                                      "scores"))]
                          for i, row in enumerate(rows)]
            for key in ("AP", "BWT"):
                entry[key] = checker.score(raw.get(key), f"{where}.{key}")
            for key in ("FWT", "average_forgetting", "uses_old_data"):
                entry[key] = checker.scalar(raw.get(key), f"{where}.{key}")
        else:
            error = checker.scalar(raw.get("error"), f"{where}.error")
            entry["error"] = "" if error is None else str(error)
        methods[name] = entry
    return {
        "tasks": tasks,
        "methods": methods,
        "seed": checker.scalar(doc.get("seed"), "seed"),
        "config": checker.mapping(checker.field(doc, "config", "", {}), "config"),
        "versions": checker.mapping(checker.field(doc, "versions", "", {}), "versions"),
        "normalisation": checker.scalar(checker.field(doc, "normalisation", "", ""), "normalisation"),
    }


def check_training_record(data: Any, source: Path) -> dict[str, Any]:
    """A fine-tuning record (``training.json``): its loss and example count, shown as given."""
    checker = _Checker(source, TRAINING_FIX)
    doc = checker.mapping(data, "the file")
    return {key: checker.scalar(doc.get(key), key) for key in ("loss", "examples")}


def read_merge_report(path: Path) -> dict[str, Any]:
    return check_merge_report(_read_json(path, MERGE_FIX), path)


def read_continual_results(path: Path) -> dict[str, Any]:
    return check_continual_results(_read_json(path, CONTINUAL_FIX), path)


def read_training_record(path: Path) -> dict[str, Any]:
    return check_training_record(_read_json(path, TRAINING_FIX), path)


# --- merge pages ----------------------------------------------------------------------------
# The functions below take the dicts that check_merge_report / check_continual_results return.

MERGE_CAPTIONS = {
    "alpha_heatmap": "α_j^(k): the weight of model k in layer j (softmax of M_N's similarity row / τ)",
    "similarity_matrices": "S^(j): RBF similarity between the models' pooled representations at a few depths",
    "similarity_per_layer": "left: S^(j)[N, k], M_N's row that the softmax turns into α; right: the RBF bandwidth σ_j",
}


def _model_rows(report: dict[str, Any]) -> list[list[Any]]:
    return [["M" + str(k), kind, model]
            for k, (model, kind) in enumerate(zip(report["models"], report["model_kinds"], strict=True))]


def _labels(report: dict[str, Any]) -> list[str]:
    return plots.merge_labels(report)


def explain_merge(report: dict[str, Any]) -> str:
    """A few sentences saying what this merge did, with its own numbers."""
    count = len(report["models"])
    params = report["parameters"]
    variant = params.get("variant", "") if report["variant"] is None else report["variant"]
    text_html = (f"Method <b>{esc(report['method'])}</b> merged {esc(count)} models (M0 = base, "
                 f"M1…M{esc(count - 1)} fine-tuned from it) with {esc(report['num_layers'])} decoder "
                 f"layers, seed {esc(report['seed'])}.")
    if report["layers"]:
        text_html += (f" RECALL picked {esc(len(report['typical_samples']))} typical samples of the "
                      "newest task (K-means in M_N's space), fed them to every model, compared the "
                      f"models layer by layer with the {esc(params.get('kernel', 'rbf'))} kernel "
                      f"({esc(params.get('aggregation', ''))}, bandwidth {esc(params.get('bandwidth', ''))})"
                      " and turned M_N's similarity row into weights α_j = softmax(S^(j)[N, :] / τ) "
                      f"with τ = {esc(params.get('temperature', ''))} (variant {esc(variant)}).")
    else:
        text_html += " This method works tensor by tensor and uses no representations or typical samples."
    return paragraph(text_html)


def merge_overview(report: dict[str, Any], run_dir: Path) -> str:
    files = ", ".join(str(name) for name in report["output_files"])
    return (explain_merge(report) + table(["model", "kind", "folder"], _model_rows(report), numeric_from=9)
            + paragraph(f"Output folder: <code>{esc(run_dir)}</code>; files: {esc(files)}"))


def merge_configuration(report: dict[str, Any]) -> str:
    return ("<h3>Method parameters (defaults filled in)</h3>" + key_value_grid(report["parameters"])
            + "<details><summary>Config as given</summary>" + json_block(report["config"])
            + "</details><details><summary>Versions</summary>" + key_value_grid(report["versions"])
            + "</details>")


def typical_samples_html(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return note("No typical samples: this method does not read the data.")
    rows = []
    for sample in samples:
        text = sample["text"]
        rows.append([sample["index"], text if len(text) <= MAX_SAMPLE_CHARS else text[:MAX_SAMPLE_CHARS] + "…"])
    return (paragraph(f"{esc(len(samples))} samples, one per K-means cluster (the sample nearest each "
                      "centroid); index = line in the sample file (0-based).")
            + scrolled(table(["index", "text"], rows, numeric_from=9)))


def merge_weights(report: dict[str, Any]) -> str:
    layers = report["layers"]
    if not layers:
        return note("This method has no per-layer weights; its parameters are in the configuration "
                    "section.")
    labels = _labels(report)
    figures_html = render_figures(lambda folder: plots.plot_merge_report(report, folder), MERGE_CAPTIONS)
    rows = [[j] + list(layer["alpha"]) for j, layer in enumerate(layers)]
    rows.append(["embeddings"] + list(report["embedding_alpha"] or [None] * len(labels)))
    rows.append(["norm, lm_head"] + list(report["head_alpha"] or [None] * len(labels)))
    return (figures_html + "<details><summary>α per layer (table)</summary>"
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
    layers = report["layers"]
    if not layers:
        return note("A merge on its own has no task scores (a continual run scores its merges); this "
                    "method records no per-layer statistics.")
    labels = _labels(report)
    uniform = 1 / len(labels)
    newest = [layer["alpha"][-1] for layer in layers]
    low, high = min(newest), max(newest)
    return (paragraph("A merge on its own has no task scores (a continual run scores its merges). What it "
                      f"measured: α per model over the layers (uniform would be {esc(f'{uniform:.3f}')}) "
                      "and the similarity S^(j)[N, k] it was computed from.")
            + table(["model", "mean α", "min α", "max α", "mean S[N, k]"], alpha_summary(layers, labels))
            + paragraph(f"M_N's weight ranges from {esc(f'{low:.4f}')} (layer {esc(newest.index(low))}) "
                        f"to {esc(f'{high:.4f}')} (layer {esc(newest.index(high))})."))


def timings_html(run: dict[str, Any]) -> str:
    rows = [[name, value] for name, value in run["timings"].items()]
    return (table(["stage", "seconds"], rows)
            + table(["peak resident memory", "MB"], [[k, v] for k, v in run["peak_rss_mb"].items()]))


def merge_page(run_dir: Path) -> str:
    report = read_merge_report(run_dir / MERGE_REPORT)
    sections = [
        ("overview", "Overview", merge_overview(report, run_dir)),
        ("configuration", "Configuration", merge_configuration(report)),
        ("typical-samples", "Typical samples", typical_samples_html(report["typical_samples"])),
        ("weights", "Weights", merge_weights(report)),
        ("metrics", "Metrics", merge_metrics(report)),
        ("timings", "Timings", timings_html(report["run"])),
    ]
    return page("Merge report: " + report["method"], str(run_dir), sections, _package_version())


# --- continual pages ------------------------------------------------------------------------

CONTINUAL_CAPTIONS = {
    "accuracy_matrices": "R[i][j]: score on task j (columns) after step i (rows; 'base' = untouched model)",
    "ap_bwt": "AP = mean score after the last step; BWT = mean change on earlier tasks since they were learned",
}


def slug(text: str) -> str:
    """The folder name the continual runner gives a strategy or a task: every character other
    than a letter, a digit, ``-``, ``_`` or ``.`` becomes ``_``. The one copy of this rule."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def merge_steps(run_dir: Path, method: str) -> list[tuple[int, Path]]:
    """(step, folder) of each merge of a strategy that has a recall_report.json, by step."""
    root = run_dir / "strategies" / slug(method)
    found = []
    for path in root.glob("step*/" + MERGE_REPORT):
        suffix = path.parent.name[len("step"):]
        if suffix.isdigit() and path.is_file():
            found.append((int(suffix), path.parent))
    return sorted(found)


def continual_overview(results: dict[str, Any], run_dir: Path) -> str:
    methods = plots.finished_methods(results)
    failed = sorted(set(results["methods"]) - set(methods))
    model = results["config"].get("model", "?")
    text_html = (f"A continual run over {esc(len(results['tasks']))} tasks in order, {esc(len(methods))} "
                 f"strategies finished, seed {esc(results['seed'])}, model <code>{esc(model)}</code>. "
                 "After each step every strategy's model is scored on every task; the metrics follow "
                 "from that accuracy matrix R.")
    scored = {name: entry["AP"] for name, entry in methods.items() if entry["AP"] is not None}
    if scored:
        best = max(scored, key=lambda name: scored[name])
        text_html += f" Highest AP: <b>{esc(best)}</b> ({esc(f'{scored[best]:.3f}')})."
    if failed:
        text_html += f" Failed: {esc(', '.join(failed))} (see metrics)."
    return paragraph(text_html) + paragraph(f"Run folder: <code>{esc(run_dir)}</code>")


def continual_configuration(results: dict[str, Any]) -> str:
    return (json_block(results["config"]) + "<details><summary>Versions</summary>"
            + key_value_grid(results["versions"]) + "</details>")


def continual_tasks(results: dict[str, Any]) -> str:
    rows = [[i, t["name"], t["kind"], t["metric"], "yes" if t["synthetic"] else "no",
             t["num_train"], t["num_eval"]] for i, t in enumerate(results["tasks"], 1)]
    return table(["step", "task", "kind", "metric", "synthetic", "train items", "eval items"], rows,
                 numeric_from=5)


def continual_metrics(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results["methods"].items():
        if "R" not in entry:
            rows.append([name, None, None, None, None, "failed: " + entry["error"][:200]])
            continue
        rows.append([name, entry["AP"], entry["BWT"], entry["FWT"], entry["average_forgetting"],
                     "yes" if entry["uses_old_data"] else "no"])
    figures_html = render_figures(lambda folder: plots.plot_continual_results(results, folder),
                                  CONTINUAL_CAPTIONS)
    return (table(["strategy", "AP", "BWT", "FWT", "mean forgetting", "old data"], rows)
            + note(str(results["normalisation"])) + figures_html)


def _merge_reports(run_dir: Path, results: dict[str, Any]) -> list[tuple[str, int, Path, dict[str, Any]]]:
    """(strategy, step, folder, report) of every merge of the run."""
    found = []
    for name, entry in results["methods"].items():
        if entry["kind"] != "merge":
            continue
        for step, folder in merge_steps(run_dir, name):
            found.append((name, step, folder, read_merge_report(folder / MERGE_REPORT)))
    return found


def continual_weights(merges: list[tuple[str, int, Path, dict[str, Any]]]) -> str:
    shown = [(name, step, report) for name, step, _, report in merges if report["layers"]]
    if not shown:
        return note("No merge of this run has per-layer weights (no RECALL strategy, or no merge "
                    "finished).")
    last_step = {name: step for name, step, _ in shown}
    parts = [paragraph("α per layer and model of every RECALL merge; the last step of each strategy is "
                       "open, earlier steps are folded.")]
    for name, step, report in shown:
        figures_html = render_figures(lambda folder, r=report: plots.plot_merge_report(r, folder),
                                      MERGE_CAPTIONS)
        opened_html = " open" if step == last_step[name] else ""
        parts.append(f"<details{opened_html}><summary>{esc(name)}, step {esc(step)}</summary>"
                     f"{figures_html}</details>")
    return "".join(parts)


def continual_samples(merges: list[tuple[str, int, Path, dict[str, Any]]]) -> str:
    parts = []
    for name, step, _, report in merges:
        if report["typical_samples"]:
            parts.append(f"<details><summary>{esc(name)}, step {esc(step)}: "
                         f"{esc(len(report['typical_samples']))} samples</summary>"
                         f"{typical_samples_html(report['typical_samples'])}</details>")
    if not parts:
        return note("No merge of this run chose typical samples.")
    return paragraph("The newest task's typical samples that each RECALL merge used.") + "".join(parts)


def continual_timings(run_dir: Path, merges: list[tuple[str, int, Path, dict[str, Any]]]) -> str:
    rows = []
    for name, step, _, report in merges:
        timings = report["run"]["timings"]
        rows.append([name + ", step " + str(step), timings.get("plan_s"), timings.get("merge_s"),
                     timings.get("total_s"), report["run"]["peak_rss_mb"].get("total")])
    training = []
    for path in sorted(run_dir.glob("**/training.json")):
        if not path.is_file():
            continue
        record = read_training_record(path)
        training.append([str(path.parent.relative_to(run_dir)), record["loss"], record["examples"]])
    timings_table_html = (table(["merge", "plan s", "merge s", "total s", "peak RSS MB"], rows) if rows
                          else note("No merge timings recorded."))
    if training:
        timings_table_html += "<h3>Fine-tuning</h3>" + table(["model", "last-epoch loss", "examples"],
                                                             training)
    return timings_table_html


def continual_page(run_dir: Path) -> str:
    results = read_continual_results(run_dir / CONTINUAL_RESULTS)
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

def _is_html_page(path: Path) -> bool:
    """Whether ``path`` starts like an HTML document (an earlier report, which may be replaced)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError as error:
        raise ReportError(f"cannot read {_short_path(path)}: {error.strerror or error}",
                          "give the path of a new .html file") from None
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith((b"<!doctype html", b"<html"))


def _check_output(output: Path) -> None:
    """Refuse an output that is a folder, not a regular file, or a file that is not an HTML page
    (replacing it would destroy a user's file, e.g. the run's own JSON), before any work."""
    where = _short_path(output)
    if output.is_dir():
        raise ReportError(f"the output {where} is a folder",
                          f"give a file path, e.g. --output {_short_path(output / REPORT_NAME)}")
    if output.is_symlink() or output.exists():
        if output.is_symlink() or not output.is_file():
            raise ReportError(f"the output {where} exists and is not a regular file",
                              "give the path of a new .html file")
        if not _is_html_page(output):
            raise ReportError(f"the output {where} exists and is not an HTML page; it was left as it is",
                              "give the path of a new .html file, or move that file away")
    ancestor = output.parent
    while not ancestor.exists() and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ReportError(f"{_short_path(ancestor)} is a file, so {where} cannot be created",
                          "give an output path inside a folder")


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write the HTML page of a merge or continual run folder; returns its path.

    Default output: ``run_dir/report.html``. The page appears only when complete (written through
    io/atomic); nothing is written when a JSON file or the output path is refused.
    """
    run_dir = Path(run_dir)
    if (run_dir / MERGE_REPORT).is_file():
        build = merge_page
    elif (run_dir / CONTINUAL_RESULTS).is_file():
        build = continual_page
    elif not run_dir.exists():
        raise ReportError(f"folder {_excerpt(str(run_dir), 200)} does not exist",
                          "pass a merge output or continual run folder")
    else:
        raise ReportError(f"{_short_path(run_dir)} holds neither {MERGE_REPORT} (a merge) nor "
                          f"{CONTINUAL_RESULTS} (a continual run)", "pass the output folder of "
                          "`recall merge` or the run_dir of `recall continual`, after it finished")
    output = Path(output) if output is not None else run_dir / REPORT_NAME
    _check_output(output)
    document = build(run_dir)
    try:
        atomic.write_text(output, document)
    except OSError as error:
        raise ReportError(f"cannot write {_short_path(output)}: {error.strerror or error}",
                          "write the page to a writable folder with free space (--output)") from None
    return output
