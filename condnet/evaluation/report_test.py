import sys

import numpy as np
import pytest
from PIL import Image

from condnet.evaluation.metrics import evaluate_predictions
from condnet.evaluation.report import (
    summary_table,
    summary_title,
    write_report,
)
from condnet.hierarchy import Hierarchy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("training_curves.png", "routing_matrix.png", "class_confusion.png")
HIERARCHY = Hierarchy({"cat": ["persian", "siamese"], "dog": ["beagle", "pug", "<unk>"]})
HISTORY = {
    "loss": [1.2, 0.8, 0.5],
    "val_loss": [1.3, 0.9, 0.7],
    "class_accuracy": [0.4, 0.6, 0.8],
    "val_class_accuracy": [0.3, 0.5, 0.7],
}


def make_metrics(hierarchy=HIERARCHY):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, hierarchy.num_classes, size=30)
    logits = rng.normal(size=(30, hierarchy.num_classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return evaluate_predictions(hierarchy, labels, probabilities)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "report"
    metrics = make_metrics()
    paths = write_report(run_dir, HIERARCHY, metrics, history=HISTORY, title="Pets & <co>")
    return run_dir, metrics, paths


def read(run_dir, name):
    return (run_dir / name).read_text(encoding="utf-8")


def test_write_report_writes_every_file(report):
    run_dir, _, paths = report
    expected = ["report.md", "report.html", *PLOTS]
    assert [path.name for path in paths] == expected
    assert all(path.parent == run_dir and path.is_file() for path in paths)


@pytest.mark.parametrize("name", PLOTS)
def test_write_report_plots_are_valid_pngs(report, name):
    path = report[0] / name
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 0 and image.height > 0


def test_write_report_markdown_summary_and_links(report):
    run_dir, metrics, _ = report
    markdown = read(run_dir, "report.md")
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in markdown
    assert f"| num_samples | {metrics['num_samples']} |" in markdown
    for group, count in metrics["routing"]["samples_per_expert"].items():
        assert f"| {group} | {count} | " in markdown
    for name in PLOTS:
        assert f"![{name}]({name})" in markdown


@pytest.mark.parametrize("name", HIERARCHY.classes)
def test_write_report_markdown_has_a_row_per_class(report, name):
    run_dir, metrics, _ = report
    scores = metrics["per_class"][name]
    cells = [name.replace("<", "\\<"), HIERARCHY.group_of(name)]
    cells += [f"{scores[key]:.4f}" for key in ("precision", "recall", "f1")]
    row = "| " + " | ".join([*cells, str(scores["support"])]) + " |"
    assert row in read(run_dir, "report.md").splitlines()


def test_write_report_html_escapes_names(report):
    page = read(report[0], "report.html")
    assert "<td>&lt;unk&gt;</td>" in page
    assert "<unk>" not in page
    assert "<h1>Pets &amp; &lt;co&gt;</h1>" in page
    assert '<img src="class_confusion.png"' in page


def test_write_report_without_history_skips_curves(tmp_path):
    paths = write_report(tmp_path, HIERARCHY, make_metrics())
    assert "training_curves.png" not in [path.name for path in paths]
    assert not (tmp_path / "training_curves.png").exists()
    assert "No training history was given" in read(tmp_path, "report.md")


def test_write_report_without_matplotlib_notes_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        paths = write_report(tmp_path, HIERARCHY, make_metrics(), history=HISTORY)
    assert [path.name for path in paths] == ["report.md", "report.html"]
    assert 'pip install "condnet[plots]"' in read(tmp_path, "report.md")


def test_write_report_accepts_a_keras_history_object(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    class History:
        history = {"loss": []}

    with pytest.warns(UserWarning):
        write_report(tmp_path, HIERARCHY, make_metrics(), history=History())
    assert (tmp_path / "report.md").is_file()


def test_write_report_rejects_incomplete_metrics_before_writing(tmp_path):
    metrics = make_metrics()
    del metrics["routing"]
    with pytest.raises(ValueError, match=r"metrics is missing \['routing'\]"):
        write_report(tmp_path / "run", HIERARCHY, metrics)
    assert not (tmp_path / "run").exists()


def test_write_report_rejects_metrics_of_another_hierarchy(tmp_path):
    other = Hierarchy({"a": ["x", "y"], "b": ["z"]})
    with pytest.raises(ValueError, match="computed for 3 classes in 2 groups"):
        write_report(tmp_path, HIERARCHY, make_metrics(other))


def test_write_report_rejects_history_of_wrong_type(tmp_path):
    with pytest.raises(TypeError, match="Received: history of type list"):
        write_report(tmp_path, HIERARCHY, make_metrics(), history=[0.5, 0.4])


@pytest.mark.parametrize(
    "routing, scored_on, title",
    [
        ("hard", "Validation split", "Validation split (30 images), hard-routed (only the "),
        ("soft", "data/test", "data/test (30 images), soft routing (every expert runs, mixed "),
        ("flat", "data/test", "data/test (30 images), flat baseline (no routing):"),
        (None, "Scored", "Scored (30 images):"),
    ],
)
def test_summary_table_title_says_what_was_scored_and_how_it_was_routed(routing, scored_on, title):
    metrics = {**make_metrics(), "inference_routing": routing}
    lines = summary_table(metrics, summary_title(metrics, scored_on)).splitlines()
    assert lines[0].startswith(title) and lines[0].endswith(":")
    assert lines[1].split() == ["metric", "value"]
    assert summary_table(metrics).splitlines()[0].split() == ["metric", "value"]  # no title


def test_summary_table_lists_headline_metrics():
    metrics = make_metrics()
    lines = summary_table(metrics).splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert set(lines[1]) == {"-"}
    rows = dict(line.split(None, 1) for line in lines[2:])
    assert rows["accuracy"] == f"{metrics['accuracy']:.4f}"
    assert rows["wrong_expert_share"] == f"{metrics['routing']['wrong_expert_share']:.4f}"
    assert rows["class_ece"] == f"{metrics['expected_calibration_error']['class']:.4f}"


def test_report_header_baseline_glossary_and_gallery(tmp_path):
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    examples = [
        {
            "path": image,
            "true": "pug",
            "predicted": "persian",
            "expert": "cat",
            "true_group": "dog",
            "confidence": 0.9,
        },
        {
            "path": image,
            "true": "pug",
            "predicted": "beagle",
            "expert": "dog",
            "true_group": "dog",
            "confidence": 0.6,
        },
        {
            "path": image,
            "true": "pug",
            "predicted": "pug",
            "expert": "dog",
            "true_group": "dog",
            "confidence": 0.8,
        },
        {
            "path": tmp_path / "missing.png",
            "true": "pug",
            "predicted": "pug",
            "expert": "dog",
            "true_group": "dog",
            "confidence": 0.8,
        },
    ]
    write_report(
        tmp_path / "run",
        HIERARCHY,
        make_metrics(),
        title="pets: validation",
        header={"data": "pets/train", "best epoch": "3 of 5", "configuration": {"epochs": 5}},
        baseline={
            "conditional": {"accuracy": 0.8, "macs_per_image": 1000},
            "flat": {"accuracy": 0.7, "macs_per_image": 1000},
        },
        examples=examples,
    )
    markdown = read(tmp_path / "run", "report.md")
    assert "## About this run" in markdown and "| best epoch | 3 of 5 |" in markdown
    assert "| epochs | 5 |" in markdown
    # 0.1 on 30 images is under two standard errors (2 x 0.1118): within noise.
    assert "is 0.1000 accuracy ahead of the flat baseline at 1.00x its MACs per image, " in markdown
    assert "within noise: less than two standard errors (standard error of the difference " in (
        markdown
    )
    assert "## Glossary" in markdown and "| gate_accuracy |" in markdown
    for kind in ("misrouted", "misclassified", "correct"):
        assert (tmp_path / "run" / "examples" / f"{kind}-00.png").is_file()
    assert not (tmp_path / "run" / "examples" / "correct-01.png").exists()  # unreadable: left out
    page = read(tmp_path / "run", "report.html")
    assert '<nav id="contents">' in page and 'href="#flat-baseline"' in page
    assert 'class="gallery"' in page and "examples/misrouted-00.png" in page


def test_a_report_on_documents_counts_documents_in_the_baseline_table(tmp_path):
    baseline = {
        "conditional": {"accuracy": 0.8, "macs_per_image": 1000, "images_per_second": 900.0},
        "flat": {"accuracy": 0.7, "macs_per_image": 500, "images_per_second": 1200.0},
    }
    write_report(tmp_path / "run", HIERARCHY, make_metrics(), baseline=baseline, documents=True)
    markdown = read(tmp_path / "run", "report.md")
    assert "| macs_per_document | 1,000 | 500 |" in markdown
    assert "| documents_per_second |" in markdown and "images_per_second" not in markdown
    assert "at 2.00x its MACs per document" in markdown and "on 30 documents" in markdown


def test_report_puts_the_options_after_the_summary_and_the_baseline(tmp_path):
    write_report(
        tmp_path,
        HIERARCHY,
        make_metrics(),
        header={"data": "pets/train", "configuration": {"epochs": 5, "routing": "soft"}},
        baseline={"conditional": {"accuracy": 0.8}, "flat": {"accuracy": 0.7}},
    )
    markdown = read(tmp_path, "report.md")
    headings = [line[3:] for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["Summary", "About this run", "Flat baseline"]
    assert headings[-1] == "Options"
    assert markdown.index("| routing | soft |") > markdown.index("## Options")
    about = markdown[markdown.index("## About this run") : markdown.index("## Flat baseline")]
    assert "| epochs |" not in about and "configuration" not in about


def test_html_tables_align_text_left_and_numbers_right(report):
    page = read(report[0], "report.html")
    assert "td.number{text-align:right}" in page and "text-align:left" in page
    assert '<td class="number">30</td>' in page  # num_samples
    glossary = page[page.index('id="glossary"') :]
    glossary = glossary[: glossary.index("</section>")]
    assert "<td>" in glossary and 'class="number"' not in glossary


def example_of(true, kind="correct"):
    group = HIERARCHY.group_of(true)
    expert = {"misrouted": "cat" if group == "dog" else "dog"}.get(kind, group)
    predicted = true if kind == "correct" else next(c for c in HIERARCHY.classes if c != true)
    return {"true": true, "predicted": predicted, "expert": expert, "true_group": group}


def test_report_lists_images_that_could_not_be_decoded(tmp_path):
    metrics = make_metrics()
    metrics["num_skipped"] = 1
    metrics["skipped"] = [{"path": "pets/pug/broken.jpg", "error": "cannot decode: truncated"}]
    write_report(tmp_path, HIERARCHY, metrics)
    markdown = read(tmp_path, "report.md")
    assert "| num_skipped | 1 |" in markdown
    assert "| pets/pug/broken.jpg | cannot decode: truncated |" in markdown
    assert "num_skipped" in summary_table(metrics)


def test_the_html_report_renders_in_a_browser(tmp_path):
    from condnet.testing import headless_chromium

    image = tmp_path / "dog.png"
    Image.new("RGB", (40, 30), (10, 200, 10)).save(image)
    example = {"path": image, "true": "pug", "expert": "cat", "true_group": "dog"}
    examples = [
        {**example, "predicted": "persian", "confidence": 0.9},
        {**example, "predicted": "pug", "expert": "dog", "confidence": 0.7},
    ]
    write_report(tmp_path / "run", HIERARCHY, make_metrics(), history=HISTORY, examples=examples)
    browser = headless_chromium()
    try:
        browser.set_window_size(1400, 1000)
        browser.get((tmp_path / "run" / "report.html").as_uri())
        images = browser.execute_script(
            "return [...document.images].map(i => [i.getAttribute('src'), i.complete, "
            "i.naturalWidth]);"
        )
        assert len(images) >= len(PLOTS) + 2
        assert all(complete and width > 0 for _, complete, width in images), images
        missing = browser.execute_script(
            "return [...document.querySelectorAll('#contents a')].map(a => "
            "a.getAttribute('href')).filter(h => !document.querySelector(h));"
        )
        assert missing == []
        # The plots sit side by side in a grid on a wide window, not in one long column.
        tops = browser.execute_script(
            "return [...document.querySelectorAll('.grid figure')].map(f => f.offsetTop);"
        )
        assert len(tops) >= 2 and len(set(tops)) < len(tops)
        assert browser.title and "condnet" in browser.page_source
    finally:
        browser.quit()
