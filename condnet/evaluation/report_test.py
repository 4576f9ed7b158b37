import sys

import numpy as np
import pytest
from PIL import Image

from condnet.evaluation.metrics import evaluate_predictions
from condnet.evaluation.report import (
    baseline_verdict,
    gap_sources,
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


def test_group_confusion_is_drawn_only_when_it_differs_from_the_routes(tmp_path):
    metrics = make_metrics()  # no gate given: the routes are the predicted groups
    same = write_report(tmp_path / "same", HIERARCHY, metrics)
    assert "group_confusion.png" not in [path.name for path in same]
    metrics["routing_matrix"] = [[30, 0], [0, 0]]  # routes that differ from the gate's choices
    differ = write_report(tmp_path / "differ", HIERARCHY, metrics)
    assert "group_confusion.png" in [path.name for path in differ]


def test_training_curves_leave_out_series_that_never_change(tmp_path, monkeypatch):
    drawn = []
    from condnet.evaluation import report as report_module

    real = report_module._plot_history
    monkeypatch.setattr(
        report_module,
        "_plot_history",
        lambda path, history, *rest: drawn.append(history) or real(path, history, *rest),
    )
    history = {**HISTORY, "gate_loss_weight": [1.0, 1.0, 1.0]}
    write_report(tmp_path, HIERARCHY, make_metrics(), history=history)
    assert "gate_loss_weight" in drawn[0]  # given to the plot ...
    names = report_module._history_names({k: v for k, v in history.items()})
    assert "gate_loss_weight" not in names  # ... which leaves it out


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


def _example(true, kind="correct"):
    group = HIERARCHY.group_of(true)
    expert = {"misrouted": "cat" if group == "dog" else "dog"}.get(kind, group)
    predicted = true if kind == "correct" else next(c for c in HIERARCHY.classes if c != true)
    return {"true": true, "predicted": predicted, "expert": expert, "true_group": group}


def test_galleries_take_examples_round_robin_over_the_classes():
    from condnet.evaluation.report import PER_KIND, across_classes

    examples = [_example("persian")] * 10 + [_example("pug")] * 10 + [_example("beagle")] * 2
    chosen = across_classes(examples, PER_KIND)
    assert [e["true"] for e in chosen] == ["persian", "pug", "beagle"] * 2 + ["persian", "pug"]
    assert across_classes(examples, PER_KIND) == chosen  # the same every time


def test_report_gallery_shows_more_than_one_class(tmp_path):
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    examples = [{**_example(name), "path": image, "confidence": 0.9} for name in ["persian"] * 9]
    examples.append({**_example("pug"), "path": image, "confidence": 0.8})
    write_report(tmp_path / "run", HIERARCHY, make_metrics(), examples=examples)
    markdown = read(tmp_path / "run", "report.md")
    assert "true pug / predicted pug" in markdown  # the tenth example, not a ninth persian
    assert markdown.count("![true persian / predicted persian") == 7


def test_gallery_thumbnails_stand_upright_by_their_exif_orientation(tmp_path):
    pixels = np.zeros((8, 16, 3), "uint8")  # stored sideways: red on the left, blue on the right
    pixels[:, :8], pixels[:, 8:] = (250, 0, 0), (0, 0, 250)
    exif = Image.Exif()
    exif[0x0112] = 6  # a viewer turns it 90 degrees clockwise: red on top
    photo = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(photo, exif=exif, quality=95)
    example = {**_example("persian"), "path": photo, "confidence": 0.9}
    write_report(tmp_path / "run", HIERARCHY, make_metrics(), examples=[example])
    thumbnail = np.asarray(Image.open(tmp_path / "run" / "examples" / "correct-00.png"))
    top_right, bottom_left = thumbnail[2, -3].astype(int), thumbnail[-3, 2].astype(int)
    assert top_right[0] > 200 > top_right[2]  # red: turned upright, not read sideways
    assert bottom_left[2] > 200 > bottom_left[0]  # blue
    assert thumbnail.shape == (96, 96, 3)  # decode_image's square, THUMBNAIL pixels a side


def test_gallery_examples_of_a_flat_classifier_take_the_group_of_its_class():
    from condnet.evaluation.report import gallery_examples

    predictions = {
        "paths": ["a.png", "b.png"],
        "labels": np.array([0, 3]),  # persian, pug
        "classes": np.eye(5)[[2, 3]] * 0.9,  # beagle (a dog), pug
    }
    rows = gallery_examples(HIERARCHY, predictions)
    assert [(r["expert"], r["true_group"], r["predicted"]) for r in rows] == [
        ("dog", "cat", "beagle"),
        ("dog", "dog", "pug"),
    ]
    routed = gallery_examples(HIERARCHY, {**predictions, "route": np.array([0, 0])})
    assert [r["expert"] for r in routed] == ["cat", "cat"]  # the expert that ran


def test_training_curves_are_wide_and_show_the_flat_baselines_accuracy(tmp_path):
    from condnet.evaluation.report import _curves

    history = {**HISTORY, "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.4, 0.6, 0.7]}
    flat = {"accuracy": [0.5, 0.6], "val_accuracy": [0.45, 0.55], "loss": [1.0, 0.9]}
    labels = [label for label, _, _ in _curves("accuracy", history, flat)]
    assert labels == [
        "accuracy",
        "val_accuracy",
        "flat baseline accuracy",
        "flat baseline val_accuracy",
    ]
    assert [label for label, _, _ in _curves("loss", history, flat)] == ["loss", "val_loss"]
    baseline = {"conditional": {"accuracy": 0.8}, "flat": {"accuracy": 0.7, "history": flat}}
    write_report(tmp_path, HIERARCHY, make_metrics(), history=history, baseline=baseline)
    with Image.open(tmp_path / "training_curves.png") as image:
        assert image.width >= 900
    assert '<figure class="wide"><a href="training_curves.png">' in read(tmp_path, "report.html")


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


def test_gap_sources_splits_the_gap_between_the_gate_and_the_experts():
    conditional = {"group_accuracy": 0.915, "within_group_accuracy": 0.692}
    flat = {"group_accuracy": 0.930, "within_group_accuracy": 0.693}
    line = gap_sources(conditional, flat)
    assert "right group for 0.9150 of the images against 0.9300" in line and "(-0.0150)" in line
    assert "right class for 0.6920 against 0.6930 (-0.0010)" in line
    assert line.endswith("The larger loss is the gate's.")
    experts_lose = gap_sources({**conditional, "within_group_accuracy": 0.6}, flat)
    assert experts_lose.endswith("The larger loss is the experts'.")
    both_ahead = gap_sources({"group_accuracy": 0.95, "within_group_accuracy": 0.7}, flat)
    assert "larger loss" not in both_ahead
    assert gap_sources({"group_accuracy": 0.9}, flat) is None


@pytest.mark.parametrize(
    "gate_part, experts_part, ending",
    [
        (-0.015, -0.001, " The larger loss is the gate's."),
        (-0.015, -0.093, " The larger loss is the experts'."),
        (-0.0117, -0.0117, " The gate and the experts lose as much (-0.0117 each)."),
        (-0.0115, 0.0, " The loss is the gate's: the experts are not behind."),
        (0.02, -0.03, " The loss is the experts': the gate is not behind."),
        (0.02, 0.001, "(+0.0010)."),
    ],
)
def test_gap_sources_names_the_part_that_is_behind(gate_part, experts_part, ending):
    flat = {"group_accuracy": 0.9383, "within_group_accuracy": 0.8883}
    conditional = {
        "group_accuracy": flat["group_accuracy"] + gate_part,
        "within_group_accuracy": flat["within_group_accuracy"] + experts_part,
    }
    line = gap_sources(conditional, flat)
    assert line.endswith(ending)
    assert line.count("loss") <= 1 and line.count("lose") <= 1


def test_gap_sources_reads_equal_printed_numbers_as_equal():
    # 0.95 - 0.9383 and 0.9 - 0.8883 differ in the last bits of a float.
    conditional = {"group_accuracy": 0.9383, "within_group_accuracy": 0.8883}
    flat = {"group_accuracy": 0.95, "within_group_accuracy": 0.9}
    assert (0.9383 - 0.95) != (0.8883 - 0.9)
    line = gap_sources(conditional, flat)
    assert "(-0.0117); given the true group" in line and "(-0.0117)." in line
    assert line.endswith("The gate and the experts lose as much (-0.0117 each).")


BOUND = "sqrt(p(1-p)/n) x sqrt(2): a simple bound"


@pytest.mark.parametrize("gain, side", [(0.048, "ahead of"), (-0.048, "behind")])
def test_baseline_verdict_calls_a_small_difference_within_noise(gain, side):
    # p = 0.9 on 200 images: standard error sqrt(0.09 / 200) x sqrt(2) = 0.0300.
    conditional = {"accuracy": 0.9 + gain / 2, "macs_per_image": 100}
    flat = {"accuracy": 0.9 - gain / 2, "macs_per_image": 100}
    verdict = baseline_verdict(conditional, flat, num_samples=200)
    assert verdict == (
        f"The conditional model is 0.0480 accuracy {side} the flat baseline at 1.00x its MACs "
        "per image, within noise: less than two standard errors (standard error of the "
        f"difference 0.0300 on 200 images, {BOUND})."
    )


@pytest.mark.parametrize("gain, words", [(0.048, "beats"), (-0.048, "loses to")])
def test_baseline_verdict_keeps_its_words_beyond_two_standard_errors(gain, words):
    # The same gap on 2,000 images: standard error 0.0095, the gap 5.1 of them.
    conditional, flat = {"accuracy": 0.9 + gain / 2}, {"accuracy": 0.9 - gain / 2}
    verdict = baseline_verdict(conditional, flat, num_samples=2000)
    assert verdict == (
        f"The conditional model {words} the flat baseline by 0.0480 accuracy (5.1 standard "
        f"errors; standard error of the difference 0.0095 on 2000 images, {BOUND})."
    )


def test_baseline_verdict_without_a_count_says_nothing_of_noise():
    verdict = baseline_verdict({"accuracy": 0.948}, {"accuracy": 0.9})
    assert verdict == "The conditional model beats the flat baseline by 0.0480 accuracy."
    tie = baseline_verdict({"accuracy": 0.902}, {"accuracy": 0.9}, num_samples=600)
    assert tie.startswith("The conditional model ties the flat baseline (+0.0020; standard ")


def test_a_document_gallery_quotes_the_first_lines_of_misrouted_and_misclassified_ones(tmp_path):
    from condnet.evaluation.report import EXCERPT_LINES

    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a").write_text(
        "\n\nMy <script>alert(1)</script> cat | purrs\nline 2\nline 3\nline 4\n"
    )
    (posts / "b").write_text("a pug post\n")
    (posts / "c").write_text("a correct post\n")
    examples = [
        {**_example("persian", "misrouted"), "path": str(posts / "a"), "confidence": 0.6},
        {**_example("pug", "misclassified"), "path": str(posts / "b"), "confidence": 0.5},
        {**_example("beagle"), "path": str(posts / "c"), "confidence": 0.9},
        {**_example("beagle", "misrouted"), "path": str(posts / "gone"), "confidence": 0.9},
    ]
    run_dir = tmp_path / "report"
    write_report(run_dir, HIERARCHY, make_metrics(), examples=examples, documents=True)
    markdown, page = read(run_dir, "report.md"), read(run_dir, "report.html")
    assert "> My \\<script>alert(1)\\</script> cat \\| purrs  \n> line 2  \n> line 3" in markdown
    assert "line 4" not in markdown and EXCERPT_LINES == 3
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "a: true persian / predicted siamese (expert dog, 0.60)" in markdown
    assert "a pug post" in markdown and "a correct post" not in markdown  # no correct ones
    assert not (run_dir / "examples").exists()  # no thumbnails, and "gone" is left out
    asked = []

    def weigh(texts):
        asked.extend(texts)
        return [[("purrs", 0.42), ("cat", 0.1)] for _ in texts]

    write_report(run_dir, HIERARCHY, make_metrics(), examples=examples, documents=True,
                 explain=weigh)  # fmt: skip
    assert len(asked) == 2 and "a pug post" in asked[1]  # the quoted documents, read once
    markdown = read(run_dir, "report.md")
    assert "(expert dog, 0.60); the words that weighed most: purrs (+0.42), cat (+0.10)" in (
        markdown
    )
