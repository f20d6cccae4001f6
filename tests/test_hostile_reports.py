"""`recall report` and the plots on hostile input: crafted or damaged JSON, names that are HTML or
matplotlib mathtext, output paths that must not be written. Each case either gives a page in
which no user value is markup, or exits 2 with a problem and a fix, and leaves no file behind."""

from __future__ import annotations

import ast
import copy
import errno
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from itertools import cycle
from pathlib import Path
from typing import Any

import pytest
import torch

from recall_merge.cli import main as cli_main
from recall_merge.reports import html as html_module
from recall_merge.reports import plots
from recall_merge.reports.analyze import analyse_states, run_analyze
from recall_merge.reports.html import (
    CONTINUAL_CAPTIONS,
    MERGE_CAPTIONS,
    ReportError,
    check_continual_results,
    check_merge_report,
    slug,
    write_report,
)
from recall_merge.reports.plots import (
    label,
    plain,
    plot_analysis,
    plot_continual_results,
    plot_merge_report,
)

MERGE_SECTIONS = ["overview", "configuration", "typical-samples", "weights", "metrics", "timings"]
CONTINUAL_SECTIONS = ["overview", "configuration", "tasks", "metrics", "weights", "typical-samples",
                      "timings"]
PAYLOADS = [
    "<script>alert(1)</script>",
    '" onload="alert(2)',
    "' onerror='alert(3)",
    "</td></tr></table><script>alert(4)</script>",
    r"$\foo{$ <img src=x onerror=alert(5)>",
    "</pre></code></title></style><script>alert(6)</script>",
    "javascript:alert(7)",
]
MATHTEXT = [r"$\foo{$", "a$b$c", r"x\$y$", "$$", r"\$"]
RECALL_STRATEGY = "merge:recall:experts:base"


# --- reading the written page ----------------------------------------------------------------

ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p",
                "nav", "a", "main", "section", "table", "thead", "tbody", "tr", "th", "td", "div",
                "pre", "details", "summary", "figure", "img", "figcaption", "footer", "b", "code",
                "span"}
ALLOWED_ATTRIBUTES = {"lang", "charset", "name", "content", "href", "id", "class", "src", "alt", "open"}


class PageParser(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    handle_startendtag = handle_starttag


def check_page_is_inert(document: str, sections: list[str]) -> None:
    """No script, no event handler, no link off the page, no extra section: whatever the JSON held."""
    assert "<script" not in document.lower()
    parser = PageParser()
    parser.feed(document)
    parser.close()
    for tag, attrs in parser.tags:
        assert tag in ALLOWED_TAGS, f"unexpected <{tag}> in the page"
        for name, value in attrs:
            assert name in ALLOWED_ATTRIBUTES, f"unexpected attribute {name}={value!r} on <{tag}>"
            if name == "href":
                assert value is not None and value.startswith("#"), value
            if name == "src":
                assert value is not None and value.startswith("data:image/png;base64,"), value[:60]
    assert [dict(attrs)["id"] for tag, attrs in parser.tags if tag == "section"] == sections
    assert [tag for tag, _ in parser.tags].count("title") == 1


def files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


# --- hostile JSON ----------------------------------------------------------------------------

# Values the figures place on an axis: they stay numbers (a string there is refused, as tested
# below); every other string or number becomes a payload.
PLOTTED = {"alpha", "similarity", "similarity_matrix", "bandwidth", "R", "AP", "BWT"}
# Objects whose keys are the user's (shown in the page), not field names the page looks up.
FREE_FORM = {"parameters", "config", "versions", "timings", "peak_rss_mb"}


def poison(value: Any, payloads: Iterator[str], *, key: str = "", free: bool = False) -> Any:
    """``value`` with every string and every unplotted number replaced by a payload, and the
    keys of free-form objects too."""
    if key in PLOTTED:
        return value
    if isinstance(value, dict):
        rename = free or key in FREE_FORM
        return {(next(payloads) if rename else k): poison(v, payloads, key=k, free=rename)
                for k, v in value.items()}
    if isinstance(value, list):
        return [poison(item, payloads, key=key, free=free) for item in value]
    if isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool)):
        return next(payloads)
    return value


@pytest.fixture(scope="module")
def real_report(tiny_recall_merge) -> dict[str, Any]:
    return json.loads((tiny_recall_merge / "recall_report.json").read_text(encoding="utf-8"))


def merge_folder(root: Path, report: Any, name: str = "merge") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "recall_report.json").write_text(json.dumps(report), encoding="utf-8")
    return folder


def test_every_value_in_a_hostile_merge_report_is_escaped(real_report, tmp_path):
    report = poison(copy.deepcopy(real_report), cycle(PAYLOADS))
    assert report["num_layers"] in PAYLOADS and report["models"][1] in PAYLOADS
    document = write_report(merge_folder(tmp_path, report)).read_text(encoding="utf-8")
    check_page_is_inert(document, MERGE_SECTIONS)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document  # shown, as text
    assert "&quot; onload=&quot;alert(2)" in document
    assert document.count("<img") == 3  # the figures, drawn with the payloads as labels


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no browser at /usr/bin/chromium (apt-get install chromium)")
def test_a_browser_builds_no_script_from_a_hostile_page(real_report, tmp_path):
    """The DOM a real HTML parser builds from the hostile page: no script element, no handler."""
    report = poison(copy.deepcopy(real_report), cycle(PAYLOADS))
    report.pop("layers")  # figures add nothing here
    page = write_report(merge_folder(tmp_path, report))
    result = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update",
                             f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                            capture_output=True, text=True, timeout=120, check=False)
    assert "<section" in result.stdout, result.stderr[-2000:]
    check_page_is_inert(result.stdout, MERGE_SECTIONS)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in result.stdout


def continual_run(root: Path, report: dict[str, Any], names: dict[str, str]) -> tuple[Path, dict]:
    """A continual run folder: results.json, one merge step (``report``) and a training record."""
    run_dir = root / "run"
    matrix = [[0.2, 0.25], [0.8, 0.3], [0.6, 0.75]]
    results = {
        "tasks": [{"spec": f"synthetic:{n}", "name": n, "kind": "classification", "metric": "accuracy",
                   "synthetic": True, "num_train": 8, "num_eval": 4}
                  for n in (names["task1"], names["task2"])],
        "rows": ["base", "after step 1", "after step 2"], "normalisation": "BWT divided by T-1",
        "methods": {
            names["merge"]: {"R": matrix, "AP": 0.675, "BWT": -0.2, "FWT": 0.05, "forgetting": [0.2],
                             "average_forgetting": 0.2, "kind": "merge", "method": "recall",
                             "uses_old_data": False},
            names["sequential"]: {"R": matrix, "AP": 0.6, "BWT": None, "FWT": None, "forgetting": [],
                                  "average_forgetting": None, "kind": "sequential",
                                  "uses_old_data": True},
            names["failed"]: {"error": "something broke", "kind": "merge"},
        },
        "seed": 0, "config": {"model": "tiny-random", "tasks": ["a", "b"]},
        "versions": {"torch": torch.__version__}}
    step = run_dir / "strategies" / slug(names["merge"]) / "step2"
    step.mkdir(parents=True)
    (step / "recall_report.json").write_text(json.dumps(report), encoding="utf-8")
    training = run_dir / "experts" / "lora" / "step1"
    training.mkdir(parents=True)
    (training / "training.json").write_text(json.dumps({"loss": 0.5, "examples": 8}))
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return run_dir, results


def test_every_value_in_a_hostile_continual_run_is_escaped(real_report, tmp_path):
    payloads = cycle(PAYLOADS)
    names = {key: next(payloads) for key in ("task1", "task2", "merge", "sequential", "failed")}
    run_dir, results = continual_run(tmp_path, poison(copy.deepcopy(real_report), payloads), names)
    hostile = poison(results, payloads)
    for name, entry in hostile["methods"].items():
        entry["kind"] = results["methods"][name]["kind"]  # "merge" is what makes its steps read
    (run_dir / "results.json").write_text(json.dumps(hostile))
    training = run_dir / "experts" / "lora" / "step1" / "training.json"
    training.write_text(json.dumps({"loss": next(payloads), "examples": next(payloads)}))
    document = write_report(run_dir).read_text(encoding="utf-8")
    check_page_is_inert(document, CONTINUAL_SECTIONS)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert document.count("<img") == 2 + 3  # accuracy matrices, AP/BWT, the merge step's three


def test_html_fstrings_interpolate_only_escaped_values():
    """The escaping convention of html.py, read from its source: in every f-string that is not an
    error message, each ``{value}`` is esc(…), fmt_number(…) or HTML built there (``*_html``).
    Messages: raise statements, ReportError(…), the _Checker class and the *check* functions."""
    tree = ast.parse(Path(html_module.__file__).read_text(encoding="utf-8"))

    def name_of(node: ast.AST) -> str:
        if isinstance(node, ast.Call):
            node = node.func
        return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""

    skipped: set[int] = set()  # messages (raise, ReportError, the checker) and esc()'s own argument
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) or (isinstance(node, ast.ClassDef) and node.name == "_Checker") or (
                isinstance(node, ast.FunctionDef) and "check" in node.name):
            skipped.update(id(inner) for inner in ast.walk(node))
        elif isinstance(node, ast.Call) and name_of(node) in {"ReportError", "esc", "fmt_number"}:
            for argument in [*node.args, *(keyword.value for keyword in node.keywords)]:
                skipped.update(id(inner) for inner in ast.walk(argument))
    checked, offenders = 0, []
    for node in ast.walk(tree):
        if not isinstance(node, ast.JoinedStr) or id(node) in skipped:
            continue
        checked += 1
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                value = part.value
                safe = (isinstance(value, ast.Call) and name_of(value) in {"esc", "fmt_number"}) or \
                    name_of(value).endswith("_html")
                if not safe:
                    offenders.append(f"line {node.lineno}: {{{ast.unparse(value)}}}")
    assert checked >= 20, "the rule found too few f-strings: it no longer reads html.py"
    assert not offenders, "values put into HTML without esc(): " + ", ".join(offenders)


# --- names that are mathtext -----------------------------------------------------------------

def test_plain_escapes_every_dollar_and_shortens():
    assert plain(r"$\foo{$") == r"\$\foo{\$"
    assert plain(r"x\$y") == r"x\\$y"  # matplotlib shows x\$y, as written
    assert label("a" * 100, 10) == "a" * 9 + "…"
    assert label("$" * 50, 5) == r"\$" * 4 + "…"


def svg_text(paths: list[Path]) -> str:
    return "".join(path.read_text(encoding="utf-8") for path in paths if path.suffix == ".svg")


def test_merge_plots_with_mathtext_model_names(real_report, tmp_path):
    report = copy.deepcopy(real_report)
    report["models"] = [f"/models/{name}" for name in MATHTEXT[:len(report["models"])]]
    paths = plot_merge_report(report, tmp_path)
    assert {p.name for p in paths} == {f"{stem}.{ext}" for ext in ("png", "svg") for stem in
                                       ("alpha_heatmap", "similarity_matrices", "similarity_per_layer")}
    assert all(path.stat().st_size > 500 for path in paths)
    assert "M1 a$b$c" in svg_text(paths) and r"M2 x\$y$" in svg_text(paths)  # drawn as written


def test_continual_plots_with_mathtext_task_and_strategy_names(real_report, tmp_path):
    names = dict(zip(("task1", "task2", "merge", "sequential", "failed"), MATHTEXT, strict=True))
    _, results = continual_run(tmp_path, real_report, names)
    paths = plot_continual_results(results, tmp_path / "figures")
    assert {p.name for p in paths} == {"accuracy_matrices.png", "accuracy_matrices.svg",
                                       "ap_bwt.png", "ap_bwt.svg"}
    assert r"$\foo{$" in svg_text(paths) and "a$b$c" in svg_text(paths)


def test_continual_plots_with_no_scores_at_all(tmp_path):
    results = {"tasks": [{"name": "t"}], "methods": {"s": {"R": [[None], [None]], "AP": None,
                                                           "BWT": None}}}
    paths = plot_continual_results(results, tmp_path)
    assert len(paths) == 4 and all(path.exists() for path in paths)


def test_analysis_plots_with_mathtext_labels(tmp_path):
    labels = ["base", r"$\foo{$", "a$b$c"]
    analysis = {"labels": labels, **analyse_states([torch.randn(4, 5, 16) for _ in labels], labels)}
    paths = plot_analysis(analysis, tmp_path)
    assert len(paths) == 6 and all(path.stat().st_size > 500 for path in paths)
    assert r"$\foo{$" in svg_text(paths)


def test_analyze_a_model_folder_named_like_mathtext(tiny_models, tmp_path):
    expert = shutil.copytree(tiny_models["e1"], tmp_path / r"$\foo{$")
    output = run_analyze([str(tiny_models["base"]), str(expert)], tiny_models["samples"],
                         tmp_path / "analysis", num_samples=4, seed=0, quiet=True)
    analysis = json.loads((output / "analysis.json").read_text(encoding="utf-8"))
    assert analysis["labels"] == ["base", r"$\foo{$"]
    assert all((output / name).stat().st_size > 500 for name in analysis["figures"])
    assert not [p.name for p in output.iterdir() if p.name.startswith(".")]  # no temporaries


def test_analyze_refuses_an_output_that_is_a_file(tiny_models, tmp_path, capsys):
    output = tmp_path / "analysis"
    output.write_text("mine")
    code = cli_main(["analyze", str(tiny_models["base"]), "--samples", str(tiny_models["samples"]),
                     "--output", str(output), "--quiet"])
    assert code == 2 and "is a file" in capsys.readouterr().err
    assert output.read_text() == "mine"


def test_merge_page_with_mathtext_names(real_report, tmp_path):
    report = copy.deepcopy(real_report)
    report["models"] = [f"/m/{name}" for name in MATHTEXT[:len(report["models"])]]
    report["method"] = r"$\foo{$"
    document = write_report(merge_folder(tmp_path, report)).read_text(encoding="utf-8")
    assert document.count("<img") == 3 and r"Merge report: $\foo{$" in document


# --- the slug rule ---------------------------------------------------------------------------

def test_slug_keeps_the_runners_folder_names():
    cases = {RECALL_STRATEGY: "merge_recall_experts_base", "a/b\\c": "a_b_c", "x.y-z_1": "x.y-z_1",
             "Ünïcödé": "Ünïcödé", "<script>": "_script_", "": ""}
    for text, expected in cases.items():
        assert slug(text) == expected
    from recall_merge.continual import runner

    # The runner is to import this slug; while it keeps its own copy, both must agree.
    runner_slug = getattr(runner, "_slug", None) or runner.slug
    for text in [*cases, *PAYLOADS, *MATHTEXT]:
        assert runner_slug(text) == slug(text)


# --- output paths ----------------------------------------------------------------------------

def report_cli(capsys, *args: str) -> tuple[int, str]:
    code = cli_main(["report", *args])
    captured = capsys.readouterr()
    return code, captured.err


def check_refusal(code: int, err: str, *parts: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and "\n  fix: " in err and "Traceback" not in err
    assert len(err) < 800, err
    for part in parts:
        assert part in err, err


@pytest.fixture()
def merge_copy(real_report, tmp_path) -> Path:
    report = copy.deepcopy(real_report)
    report.pop("layers")  # no figures: these tests are about paths
    return merge_folder(tmp_path, report)


def test_output_that_is_a_folder_is_refused(merge_copy, tmp_path, capsys):
    target = tmp_path / "pages"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    code, err = report_cli(capsys, str(merge_copy), "--output", str(target))
    check_refusal(code, err, "is a folder", "report.html")
    assert files_under(target) == {"keep.txt"}
    assert not (merge_copy / "report.html").exists()


def test_report_html_that_is_a_folder_is_refused(merge_copy, capsys):
    (merge_copy / "report.html").mkdir()
    code, err = report_cli(capsys, str(merge_copy))
    check_refusal(code, err, "is a folder")


@pytest.mark.parametrize("name", ["recall_report.json", "notes.txt"])
def test_output_over_a_file_that_is_no_html_page_is_refused(merge_copy, capsys, name):
    target = merge_copy / name
    if not target.exists():
        target.write_text("my notes\n")
    before = target.read_bytes()
    code, err = report_cli(capsys, str(merge_copy), "--output", str(target))
    check_refusal(code, err, "not an HTML page")
    assert target.read_bytes() == before


def test_output_below_a_file_is_refused(merge_copy, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = report_cli(capsys, str(merge_copy), "--output", str(blocker / "sub" / "page.html"))
    check_refusal(code, err, "is a file")
    assert blocker.read_text() == "x"


def test_an_earlier_page_is_replaced(merge_copy, capsys):
    first = write_report(merge_copy)
    first.write_text("<!DOCTYPE html>\n<p>old</p>")
    code, _ = report_cli(capsys, str(merge_copy))
    assert code == 0 and "<p>old</p>" not in first.read_text(encoding="utf-8")
    assert files_under(merge_copy) == {"recall_report.json", "report.html"}


def test_a_failed_write_is_an_error_and_leaves_nothing(merge_copy, monkeypatch):
    def refuse(path: Path, text: str) -> Path:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(html_module.atomic, "write_text", refuse)
    with pytest.raises(ReportError, match="cannot write"):
        write_report(merge_copy)
    assert files_under(merge_copy) == {"recall_report.json"}


# --- malformed JSON, whole files -------------------------------------------------------------

BAD_FILES: dict[str, bytes] = {
    "list": b"[1, 2, 3]",
    "string": b'"a report"',
    "null": b"null",
    "number": b"42",
    "empty object": b"{}",
    "not JSON": b"{not json",
    "empty file": b"",
    "not UTF-8": b'{"method": "\xff\xfe"}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "nested object": b'{"method": "x", "models": ["a"], "config": ' + b'{"a": ' * 80 + b"1" + b"}" * 81,
    "huge integer": b'{"method": "x", "models": ["a"], "seed": ' + b"9" * 5000 + b"}",
    "no models": b'{"method": "x", "models": []}',
    "NaN weight": b'{"method": "recall", "models": ["a"], "layers": [{"alpha": [NaN]}]}',
    "huge weight": b'{"method": "recall", "models": ["a"], "layers": [{"alpha": [1e300]}]}',
    "long value": b'{"method": "x", "models": "' + b"x" * 5000 + b'"}',
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_malformed_merge_report_exits_2(tmp_path, capsys, case):
    folder = tmp_path / "merge"
    folder.mkdir()
    (folder / "recall_report.json").write_bytes(BAD_FILES[case])
    code, err = report_cli(capsys, str(folder))
    check_refusal(code, err, "recall_report.json")
    assert files_under(folder) == {"recall_report.json"}


def test_an_oversized_report_is_refused_before_it_is_read(tmp_path, capsys):
    folder = tmp_path / "merge"
    folder.mkdir()
    with open(folder / "recall_report.json", "wb") as handle:
        handle.truncate(html_module.MAX_JSON_BYTES + 1)  # sparse: nothing to read in 1 ms
    code, err = report_cli(capsys, str(folder))
    check_refusal(code, err, "MiB")


def test_a_list_report_exits_2_from_the_real_command(tmp_path):
    folder = tmp_path / "merge"
    folder.mkdir()
    (folder / "recall_report.json").write_text("[]")
    result = subprocess.run([sys.executable, "-m", "recall_merge.cli", "report", str(folder)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "must be a JSON object" in result.stderr and "fix:" in result.stderr
    assert files_under(folder) == {"recall_report.json"}


# --- malformed JSON, field by field ----------------------------------------------------------

DELETE = object()
REPLACEMENTS = [DELETE, [], "text", None, {"nested": {"deeper": [1]}}, 7]


def mutated(document: Any, path: tuple, replacement: Any) -> Any:
    document = copy.deepcopy(document)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if replacement is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return document


def run_mutations(cases: list[tuple[tuple, Any, Any]], folder: Path, json_name: str, sections: list[str],
                  capsys, monkeypatch, draws, captions: dict[str, str]) -> tuple[int, int]:
    """Write each mutated document, run `recall report`, collect every way it misbehaved.

    ``draws(path)`` says whether the figures with ``captions`` depend on that field; otherwise
    figures are left out (each costs ~0.3 s; the checks and tables under test are the same), and
    drawn ones are drawn small."""
    real_render = html_module.render_figures
    monkeypatch.setattr(plots, "PNG_DPI", 30)
    before = files_under(folder)
    failures, outcomes = [], {0: 0, 2: 0}
    for path, replacement, document in cases:
        drawn = captions if draws(path) else None
        monkeypatch.setattr(html_module, "render_figures", lambda draw, wanted, drawn=drawn:
                            real_render(draw, wanted) if wanted is drawn else "")
        (folder / json_name).write_text(json.dumps(document), encoding="utf-8")
        (folder / "report.html").unlink(missing_ok=True)
        name = f"{'.'.join(map(str, path))} -> {'deleted' if replacement is DELETE else replacement!r}"
        try:
            code = cli_main(["report", str(folder)])
        except Exception as error:  # noqa: BLE001 - a crash is what this test looks for
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        err = capsys.readouterr().err
        left = files_under(folder) - before
        if code == 0:
            check_page_is_inert((folder / "report.html").read_text(encoding="utf-8"), sections)
            if left != {"report.html"}:
                failures.append(f"{name}: left {sorted(left)}")
        elif code == 2:
            if not (err.startswith("error: ") and "\n  fix: " in err and len(err) < 800) or left:
                failures.append(f"{name}: message {err!r}, left {sorted(left)}")
        else:
            failures.append(f"{name}: exit {code}")
        outcomes[code] = outcomes.get(code, 0) + 1
    monkeypatch.setattr(html_module, "render_figures", real_render)
    assert not failures, "\n".join(failures)
    return outcomes[0], outcomes[2]


def test_every_field_of_a_merge_report_damaged_in_turn(real_report, tmp_path, capsys, monkeypatch):
    report = real_report
    paths = [(key,) for key in report]
    paths += [("layers", 0, key) for key in report["layers"][0]]
    paths += [("typical_samples", 0, key) for key in report["typical_samples"][0]]
    paths += [("run", key) for key in report["run"]] + [("run", "timings", next(iter(report["run"]["timings"])))]
    paths += [("models", 1), ("layers", 0, "alpha", 1), ("layers", 1, "similarity_matrix", 2),
              ("layers", 0), ("typical_samples", 0), ("model_kinds", 0), ("output_files", 0)]
    cases = [(path, value, mutated(report, path, value)) for path in paths for value in REPLACEMENTS]
    folder = merge_folder(tmp_path, report)

    def draws(path: tuple) -> bool:
        return path[0] == "models" or (path[0] == "layers" and (len(path) < 3 or path[2] in PLOTTED))

    succeeded, refused = run_mutations(cases, folder, "recall_report.json", MERGE_SECTIONS, capsys,
                                       monkeypatch, draws, MERGE_CAPTIONS)
    assert succeeded > 20 and refused > 50  # both outcomes exercised, not one by accident


def test_every_field_of_continual_results_damaged_in_turn(real_report, tmp_path, capsys, monkeypatch):
    names = {"task1": "alpha", "task2": "beta", "merge": RECALL_STRATEGY, "sequential": "sequential",
             "failed": "merge:ties:experts:base"}
    run_dir, results = continual_run(tmp_path, real_report, names)
    paths = [(key,) for key in results]
    paths += [("tasks", 0, key) for key in results["tasks"][0]]
    for name in results["methods"]:
        paths += [("methods", name)] + [("methods", name, key) for key in results["methods"][name]]
    paths += [("methods", RECALL_STRATEGY, "R", 1), ("methods", RECALL_STRATEGY, "R", 1, 0),
              ("config", "model"), ("tasks", 1)]
    cases = [(path, value, mutated(results, path, value)) for path in paths for value in REPLACEMENTS]
    # The merge step's own report and the training record, damaged as whole files.
    step = run_dir / "strategies" / slug(RECALL_STRATEGY) / "step2" / "recall_report.json"
    training = run_dir / "experts" / "lora" / "step1" / "training.json"

    def draws(path: tuple) -> bool:  # the other finished strategy is drawn the same way
        if path[0] == "methods":
            return len(path) == 1 or (path[1] == RECALL_STRATEGY and (len(path) < 3 or path[2] in PLOTTED))
        return path[0] == "tasks" and (len(path) < 3 or path[2] == "name")

    succeeded, refused = run_mutations(cases, run_dir, "results.json", CONTINUAL_SECTIONS, capsys,
                                       monkeypatch, draws, CONTINUAL_CAPTIONS)
    assert succeeded > 20 and refused > 30
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    for damaged in (step, training):
        original = damaged.read_text(encoding="utf-8")
        damaged.write_text('["not", "an", "object"]')
        code, err = report_cli(capsys, str(run_dir))
        check_refusal(code, err, damaged.name, "must be a JSON object")
        damaged.write_text(original)
    assert not (run_dir / "report.html").exists()


def test_checkers_return_only_what_they_checked(real_report):
    report = check_merge_report(real_report, Path("recall_report.json"))
    assert report["models"] == real_report["models"]
    assert report["layers"][0]["alpha"] == real_report["layers"][0]["alpha"]
    results = check_continual_results({"tasks": [{"name": "t"}], "methods": {
        "s": {"R": [[0.1], [float("nan")]], "AP": float("nan"), "BWT": None}}}, Path("results.json"))
    assert results["methods"]["s"]["R"] == [[0.1], [None]]  # NaN scores are shown as n/a
    assert results["methods"]["s"]["AP"] is None
    with pytest.raises(ReportError, match=r"methods\.s\.R must be a list of 2 rows"):
        check_continual_results({"tasks": [{"name": "t"}], "methods": {"s": {"R": [[0.1]]}}},
                                Path("results.json"))
