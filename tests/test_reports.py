"""Representation analysis, plots and the self-contained HTML report (tiny synthetic models)."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from recall_merge.cli import main as cli_main
from recall_merge.reports.analyze import (
    adjacent_layer_similarity,
    analyse_states,
    choose_samples,
    cross_model_similarity,
    run_analyze,
    spearman,
    summarise_adjacent,
    summarise_divergence,
)
from recall_merge.reports.html import ReportError, slug, write_report
from recall_merge.reports.plots import plot_continual_results, plot_merge_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MERGE_SECTIONS = ("overview", "configuration", "typical-samples", "weights", "metrics", "timings")
CONTINUAL_SECTIONS = MERGE_SECTIONS + ("tasks",)
RECALL_STRATEGY = "merge:recall:experts:base"


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_merge(tiny_recall_merge) -> Path:
    """A real RECALL merge of the tiny base and two experts (its folder)."""
    return tiny_recall_merge


def fake_results(num_tasks: int = 2) -> dict:
    """A results.json of a continual run: three strategies, one of them failed."""
    def matrix(offset: float) -> list[list[float]]:
        return [[round(0.2 + offset + 0.1 * (i == j + 1) + 0.05 * i, 3) for j in range(num_tasks)]
                for i in range(num_tasks + 1)]

    methods = {
        "sequential": {"R": matrix(0.1), "AP": 0.5, "BWT": -0.2, "FWT": 0.01, "forgetting": [0.2],
                       "average_forgetting": 0.2, "kind": "sequential", "uses_old_data": False},
        RECALL_STRATEGY: {"R": matrix(0.2), "AP": 0.6, "BWT": None if num_tasks == 1 else -0.05,
                          "FWT": None, "forgetting": [], "average_forgetting": None, "kind": "merge",
                          "method": "recall", "uses_old_data": False},
        "merge:dare_ties:experts:base": {"error": "something broke", "kind": "merge"},
    }
    return {"tasks": [{"spec": f"synthetic:t{j}", "name": f"task{j}", "kind": "classification",
                       "metric": "accuracy", "synthetic": True, "num_train": 8, "num_eval": 4}
                      for j in range(num_tasks)],
            "rows": ["base"] + [f"after step {i}" for i in range(1, num_tasks + 1)],
            "normalisation": "BWT and FWT divided by T-1", "methods": methods, "seed": 0,
            "config": {"model": "tiny-random", "tasks": [f"synthetic:t{j}" for j in range(num_tasks)]},
            "versions": {"torch": torch.__version__}}


@pytest.fixture(scope="module")
def continual_run(tiny_merge, tmp_path_factory) -> Path:
    """A continual run folder: results.json and two RECALL merge steps (copies of a real merge)."""
    run_dir = tmp_path_factory.mktemp("continual") / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps(fake_results()))
    for step in (1, 2):
        folder = run_dir / "strategies" / slug(RECALL_STRATEGY) / f"step{step}"
        folder.mkdir(parents=True)
        shutil.copy(tiny_merge / "recall_report.json", folder)
    training = run_dir / "experts" / "lora-x" / "step1"
    training.mkdir(parents=True)
    (training / "training.json").write_text(json.dumps({"loss": 0.5, "examples": 8, "seed": 1}))
    return run_dir


def check_figure_files(paths: list[Path]) -> None:
    assert paths, "no figure written"
    for path in paths:
        assert path.exists() and path.stat().st_size > 500
        if path.suffix == ".png":
            assert path.read_bytes().startswith(PNG_MAGIC)
        else:
            assert path.suffix == ".svg" and b"<svg" in path.read_bytes()[:2000]
    assert {p.stem for p in paths if p.suffix == ".png"} == {p.stem for p in paths if p.suffix == ".svg"}


def embedded_images(document: str) -> list[bytes]:
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', document)
    images = []
    for source in sources:
        assert source.startswith("data:image/png;base64,"), source[:60]
        images.append(base64.b64decode(source.split(",", 1)[1], validate=True))
    return images


# --- analysis maths --------------------------------------------------------------------------

def test_adjacent_similarity_of_identical_layers_is_one():
    layer = torch.randn(6, 16)
    pairs = adjacent_layer_similarity(torch.stack([layer, layer, layer * 3.0]))
    assert [p["block"] for p in pairs] == [0, 1]
    assert pairs[0]["rbf"] == pytest.approx(1.0) and pairs[0]["cka"] == pytest.approx(1.0)
    assert pairs[1]["rbf"] < 1.0  # a rescaled layer is far in RBF …
    assert pairs[1]["cka"] == pytest.approx(1.0)  # … but identical for CKA (scale-invariant)


def test_summary_detects_dips_at_both_ends():
    curve = [{"block": j, "rbf": v, "cka": v} for j, v in enumerate([0.3, 0.9, 0.95, 0.92, 0.4])]
    summary = summarise_adjacent(curve)
    assert summary["holds"] and summary["first"] == 0.3 and summary["last"] == 0.4
    assert summary["interior_min"] == 0.9
    flat = [{"block": j, "rbf": 0.9, "cka": 0.9} for j in range(5)]
    assert not summarise_adjacent(flat)["holds"]


def test_spearman_follows_the_trend():
    assert spearman([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.0)
    assert spearman([4.0, 3.0, 1.0, 0.5]) == pytest.approx(-1.0)
    assert spearman([1.0]) == 0.0


def diverging_states(num_models: int = 3, blocks: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """Experts whose pooled states move away from the base more and more with depth."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(blocks + 1, 10, 32, generator=generator)
    growth = torch.linspace(0.0, 1.0, blocks + 1)[:, None, None]
    return [base] + [base + growth * torch.randn(base.shape, generator=generator)
                     for _ in range(num_models - 1)]


def test_cross_model_similarity_falls_with_depth_when_experts_diverge():
    states = diverging_states()
    layers = cross_model_similarity(states)
    assert len(layers) == 8 and len(layers[0]["rbf"]) == 3
    assert layers[0]["relative_shift_from_base"][0] < layers[-1]["relative_shift_from_base"][0]
    divergence = summarise_divergence(layers)
    assert divergence["relative_shift_from_base"]["holds"]
    assert divergence["cka_to_base"]["holds"]
    assert divergence["cka_to_base"]["spearman_with_depth"] < -0.5


def test_identical_models_are_fully_similar_at_every_depth():
    base = torch.randn(4, 5, 16)
    layers = cross_model_similarity([base, base.clone()])
    for layer in layers:
        assert layer["rbf_to_base"] == pytest.approx([1.0])
        assert layer["relative_shift_from_base"] == pytest.approx([0.0])
        assert layer["rbf_between_experts"] is None  # one expert: no pair
    assert not summarise_divergence(layers)["rbf_to_base"]["holds"]


def test_single_model_gets_only_the_adjacent_analysis():
    result = analyse_states([torch.randn(4, 5, 16)], ["base"])
    assert result["cross_model"] is None and result["divergence"] is None
    assert len(result["adjacent"][0]["pairs"]) == 3


def test_sample_subset_is_seeded_and_in_file_order():
    texts = [f"t{i}" for i in range(20)]
    first, again = choose_samples(texts, 5, seed=3), choose_samples(texts, 5, seed=3)
    assert first == again and len(first) == 5
    assert first == sorted(first, key=texts.index)
    assert choose_samples(texts, 50, seed=0) == texts


# --- recall analyze --------------------------------------------------------------------------

def test_analyze_writes_json_and_figures(tiny_models, tmp_path):
    models = [str(tiny_models["base"]), str(tiny_models["e1"]), str(tiny_models["e2"])]
    output = run_analyze(models, tiny_models["samples"], tmp_path / "analysis", num_samples=6,
                         seed=0, quiet=True)
    analysis = json.loads((output / "analysis.json").read_text())
    assert analysis["num_samples"] == 6 and analysis["num_blocks"] == 2
    assert analysis["labels"] == ["base", "expert1", "expert2"]
    assert len(analysis["adjacent"]) == 3 and len(analysis["cross_model"]) == 2
    assert len(analysis["cross_model"][0]["rbf_to_base"]) == 2
    assert set(analysis["divergence"]) >= {"rbf_to_base", "cka_to_base", "relative_shift_from_base"}
    check_figure_files([output / name for name in analysis["figures"]])
    assert {Path(n).stem for n in analysis["figures"]} == {
        "adjacent_similarity", "cross_model_similarity", "cross_model_matrices"}


def test_analyze_cli_with_one_model(tiny_models, tmp_path, capsys):
    output = tmp_path / "one"
    assert cli_main(["analyze", str(tiny_models["base"]), "--samples", str(tiny_models["samples"]),
                     "--output", str(output), "--num-samples", "4", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(output)
    analysis = json.loads((output / "analysis.json").read_text())
    assert analysis["cross_model"] is None
    assert sorted(analysis["figures"]) == ["adjacent_similarity.png", "adjacent_similarity.svg"]


def test_analyze_refuses_a_missing_sample_file(tiny_models, tmp_path, capsys):
    code = cli_main(["analyze", str(tiny_models["base"]), "--samples", str(tmp_path / "none.jsonl"),
                     "--output", str(tmp_path / "x"), "--quiet"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# --- plots -----------------------------------------------------------------------------------

def test_merge_plots(tiny_merge, tmp_path):
    report = json.loads((tiny_merge / "recall_report.json").read_text())
    paths = plot_merge_report(report, tmp_path)
    check_figure_files(paths)
    assert {p.stem for p in paths} == {"alpha_heatmap", "similarity_matrices", "similarity_per_layer"}


def test_classic_merge_has_no_weight_plots(tmp_path):
    assert plot_merge_report({"method": "ties", "models": ["a", "b"]}, tmp_path) == []


@pytest.mark.parametrize("num_tasks", [1, 3])
def test_continual_plots(tmp_path, num_tasks):
    paths = plot_continual_results(fake_results(num_tasks), tmp_path)
    check_figure_files(paths)
    assert {p.stem for p in paths} == {"accuracy_matrices", "ap_bwt"}


# --- the HTML page ---------------------------------------------------------------------------

def check_self_contained(document: str) -> None:
    assert "<script" not in document.lower() and "<link" not in document.lower()
    assert not re.search(r'(src|href)="(https?:)?//', document)
    assert "url(" not in document


def test_merge_report_page(tiny_merge):
    path = write_report(tiny_merge)
    assert path == tiny_merge / "report.html"
    document = path.read_text(encoding="utf-8")
    for section_id in MERGE_SECTIONS:
        assert f'<section id="{section_id}">' in document
    images = embedded_images(document)
    assert len(images) == 3 and all(image.startswith(PNG_MAGIC) for image in images)
    check_self_contained(document)
    report = json.loads((tiny_merge / "recall_report.json").read_text())
    for sample in report["typical_samples"]:
        assert sample["text"] in document
    assert "plan_s" in document and "peak resident memory" in document


def test_continual_report_page(continual_run, tmp_path):
    path = write_report(continual_run, tmp_path / "elsewhere" / "page.html")
    document = path.read_text(encoding="utf-8")
    for section_id in CONTINUAL_SECTIONS:
        assert f'<section id="{section_id}">' in document
    images = embedded_images(document)
    # accuracy matrices + AP/BWT bars + three figures for each of the two merge steps
    assert len(images) == 2 + 2 * 3 and all(image.startswith(PNG_MAGIC) for image in images)
    check_self_contained(document)
    assert "something broke" in document and "task1" in document
    assert f"{RECALL_STRATEGY}, step 2" in document
    assert not (continual_run / "report.html").exists()


def test_report_escapes_sample_text(tiny_merge, tmp_path):
    folder = tmp_path / "merge"
    folder.mkdir()
    report = json.loads((tiny_merge / "recall_report.json").read_text())
    report["typical_samples"] = [{"index": 0, "text": "<script>alert(1)</script> & more"}]
    report.pop("layers")  # no figures needed here
    (folder / "recall_report.json").write_text(json.dumps(report))
    document = write_report(folder).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in document
    check_self_contained(document)


def test_classic_merge_page_says_there_are_no_weights(tmp_path):
    folder = tmp_path / "ties"
    folder.mkdir()
    (folder / "recall_report.json").write_text(json.dumps(
        {"method": "ties", "models": ["base", "e1"], "model_kinds": ["base", "full"], "num_layers": 2,
         "seed": 0, "parameters": {"density": 0.2}, "config": {}, "versions": {},
         "run": {"timings": {"total_s": 1.0}, "peak_rss_mb": {"total": 10.0}}}))
    document = write_report(folder).read_text(encoding="utf-8")
    assert "no per-layer weights" in document and "<img" not in document
    for section_id in MERGE_SECTIONS:
        assert f'<section id="{section_id}">' in document


def test_report_of_a_folder_without_results_is_refused(tmp_path, capsys):
    with pytest.raises(ReportError, match="neither"):
        write_report(tmp_path)
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
