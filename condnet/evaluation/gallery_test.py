"""Tests of the report's examples: thumbnails, quoted documents."""

import numpy as np
from PIL import Image

from condnet.evaluation.gallery import EXCERPT_LINES
from condnet.evaluation.report import write_report
from condnet.evaluation.report_test import HIERARCHY, example_of, make_metrics, read


def test_report_gallery_shows_more_than_one_class(tmp_path):
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    examples = [{**example_of(name), "path": image, "confidence": 0.9} for name in ["persian"] * 9]
    examples.append({**example_of("pug"), "path": image, "confidence": 0.8})
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
    example = {**example_of("persian"), "path": photo, "confidence": 0.9}
    write_report(tmp_path / "run", HIERARCHY, make_metrics(), examples=[example])
    thumbnail = np.asarray(Image.open(tmp_path / "run" / "examples" / "correct-00.png"))
    top_right, bottom_left = thumbnail[2, -3].astype(int), thumbnail[-3, 2].astype(int)
    assert top_right[0] > 200 > top_right[2]  # red: turned upright, not read sideways
    assert bottom_left[2] > 200 > bottom_left[0]  # blue
    assert thumbnail.shape == (96, 96, 3)  # decode_image's square, THUMBNAIL pixels a side


def test_a_document_gallery_quotes_the_first_lines_of_misrouted_and_misclassified_ones(tmp_path):
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "a").write_text(
        "\n\nMy <script>alert(1)</script> cat | purrs\nline 2\nline 3\nline 4\n"
    )
    (posts / "b").write_text("a pug post\n")
    (posts / "c").write_text("a correct post\n")
    examples = [
        {**example_of("persian", "misrouted"), "path": str(posts / "a"), "confidence": 0.6},
        {**example_of("pug", "misclassified"), "path": str(posts / "b"), "confidence": 0.5},
        {**example_of("beagle"), "path": str(posts / "c"), "confidence": 0.9},
        {**example_of("beagle", "misrouted"), "path": str(posts / "gone"), "confidence": 0.9},
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
