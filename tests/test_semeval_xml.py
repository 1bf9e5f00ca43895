"""The SemEval ABSA XML reader (MAMS, SemEval-2014/15/16), its per-file download, and data=mams."""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MAMS_DIR, compose_train
from hydra.utils import instantiate

from absa_lightning.data import DataError, read_semeval_xml
from absa_lightning.data.download import ChecksumError, ensure_dataset

POLARITIES = ("Positive", "Negative", "Neutral")

MAMS_STYLE = """<?xml version="1.0" encoding="utf-8"?>
<sentences>
\t<sentence>
\t\t<text>Hostess was extremely accommodating &amp; kind.</text>
\t\t<aspectCategories>
\t\t\t<aspectCategory category="staff" polarity="positive"/>
\t\t\t<aspectCategory category="miscellaneous" polarity="NEUTRAL"/>
\t\t</aspectCategories>
\t</sentence>
\t<sentence>
\t\t<text>  The food was cold but the price was fine.  </text>
\t\t<aspectCategories>
\t\t\t<aspectCategory category="food" polarity="negative"/>
\t\t\t<aspectCategory category="price" polarity="Positive"/>
\t\t</aspectCategories>
\t</sentence>
</sentences>
"""

# SemEval-2015/16: reviews of sentences, <Opinions>, entity#attribute categories, targets
SEMEVAL_2016 = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Reviews>
    <Review rid="1004293">
        <sentences>
            <sentence id="1004293:0">
                <text>Judging from previous posts this used to be a good place.</text>
                <Opinions>
                    <Opinion target="place" category="RESTAURANT#GENERAL" polarity="negative"
                     from="51" to="56"/>
                </Opinions>
            </sentence>
            <sentence id="1004293:1" OutOfScope="TRUE">
                <text>We went on a Tuesday.</text>
            </sentence>
        </sentences>
    </Review>
</Reviews>
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def sentence(text: str, *labels: tuple[str, str]) -> str:
    items = "".join(f'<aspectCategory category="{a}" polarity="{p}"/>\n' for a, p in labels)
    categories = f"<aspectCategories>\n{items}</aspectCategories>"
    return f"<sentence>\n<text>{text}</text>\n{categories}\n</sentence>\n"


def test_reads_mams_style_sentences_with_their_lines(tmp_path: Path) -> None:
    examples = read_semeval_xml(write(tmp_path / "train.xml", MAMS_STYLE), POLARITIES)
    assert [ex.text for ex in examples] == [
        "Hostess was extremely accommodating & kind.",
        "The food was cold but the price was fine.",
    ]
    assert examples[0].labels == {"staff": "Positive", "miscellaneous": "Neutral"}
    assert examples[1].labels == {"food": "Negative", "price": "Positive"}
    assert [ex.line for ex in examples] == [3, 10]  # the <sentence> lines


def test_reads_semeval_2016_opinions(tmp_path: Path) -> None:
    examples = read_semeval_xml(write(tmp_path / "restaurants.xml", SEMEVAL_2016), POLARITIES)
    assert [(ex.labels, ex.line) for ex in examples] == [
        ({"RESTAURANT#GENERAL": "Negative"}, 5),
        ({}, 12),  # a sentence without opinions is kept, unlabelled (as CSV's {OTHERS};)
    ]


def test_malformed_xml_names_file_line_and_text(tmp_path: Path) -> None:
    broken = MAMS_STYLE.replace(
        '</text>\n\t\t<aspectCategories>\n\t\t\t<aspectCategory category="food"',
        '</txt>\n\t\t<aspectCategories>\n\t\t\t<aspectCategory category="food"',
    )
    path = write(tmp_path / "bad.xml", broken)
    for on_error in ("raise", "skip"):  # an unparsable file cannot be skipped row by row
        with pytest.raises(DataError) as caught:
            read_semeval_xml(path, POLARITIES, on_error=on_error)
        err = caught.value
        assert (err.path, err.line) == (str(path), 11)
        assert err.text == "<text>  The food was cold but the price was fine.  </txt>"
        assert f"{path}:11: malformed XML (mismatched tag" in str(err)


def test_unknown_polarity_is_located_at_its_element(tmp_path: Path) -> None:
    text = MAMS_STYLE.replace(
        'category="price" polarity="Positive"', 'category="price" polarity="conflict"'
    )
    path = write(tmp_path / "conflict.xml", text)
    with pytest.raises(DataError) as caught:
        read_semeval_xml(path, POLARITIES)
    err = caught.value
    assert err.line == 14
    assert err.text == '<aspectCategory category="price" polarity="conflict"/>'
    assert "unknown polarity 'conflict'" in str(err) and f"{path}:14:" in str(err)
    # conflict as a fourth class, when the polarities name it
    examples = read_semeval_xml(path, (*POLARITIES, "Conflict"))
    assert examples[1].labels == {"food": "Negative", "price": "Conflict"}


@pytest.mark.parametrize(
    ("body", "line", "problem"),
    [
        (
            '<sentence>\n<text>x</text>\n<aspectCategory polarity="positive"/>\n</sentence>',
            5,
            "without a 'category' attribute",
        ),
        (
            '<sentence>\n<text>x</text>\n<aspectCategory category="food"/>\n</sentence>',
            5,
            "without a 'polarity' attribute",
        ),
        ("<sentence>\n<text>   </text>\n</sentence>", 3, "empty one"),
        (sentence("x", ("food", "positive"), ("food", "negative")), 3, "two polarities"),
    ],
)
def test_bad_sentences_are_located(tmp_path: Path, body: str, line: int, problem: str) -> None:
    path = write(tmp_path / "a.xml", f'<?xml version="1.0"?>\n<sentences>\n{body}\n</sentences>\n')
    with pytest.raises(DataError, match=problem) as caught:
        read_semeval_xml(path, POLARITIES)
    assert caught.value.line == line


def test_skip_mode_counts_bad_sentences_and_keeps_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = (
        sentence("good one", ("food", "positive"), ("staff", "negative"))
        + sentence("conflicted", ("food", "conflict"), ("staff", "unknown"))
        + sentence("twice", ("food", "positive"), ("food", "negative"))
        + sentence("another good one", ("price", "neutral"))
    )
    path = write(tmp_path / "a.xml", f"<sentences>\n{body}</sentences>\n")
    with caplog.at_level(logging.WARNING):
        examples = read_semeval_xml(path, POLARITIES, on_error="skip")
    assert [ex.text for ex in examples] == ["good one", "another good one"]
    assert examples[1].labels == {"price": "Neutral"}
    assert "skipped 2 rows" in caplog.text  # one per bad sentence, not per bad label
    assert "unknown polarity" in caplog.text and "two polarities" in caplog.text


def test_a_dtd_is_refused(tmp_path: Path) -> None:
    """Entities expand (the 'billion laughs'); SemEval files have no DTD."""
    text = '<?xml version="1.0"?>\n<!DOCTYPE s [<!ENTITY a "aaaa">]>\n<sentences></sentences>\n'
    with pytest.raises(DataError, match="document type declaration") as caught:
        read_semeval_xml(write(tmp_path / "dtd.xml", text), POLARITIES)
    assert caught.value.line == 2


def test_xml_without_sentences_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "a.xml", "<?xml version='1.0'?>\n<reviews/>\n")
    with pytest.raises(DataError, match="no <sentence> elements"):
        read_semeval_xml(path, POLARITIES)


# --- download: one URL and one SHA-256 per file ------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on localhost, and its base URL."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_files_download_one_by_one_with_their_checksums(
    tmp_path: Path, served: tuple[Path, str]
) -> None:
    folder, base = served
    names = ["train.xml", "val.xml"]
    for name in names:
        write(folder / name, MAMS_STYLE.replace("Hostess", name))
    urls = {name: f"{base}/{name}" for name in names}
    sums = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}
    root = tmp_path / "data"
    root.mkdir()
    (root / "val.xml").write_text("already here", encoding="utf-8")  # present: not fetched

    ensure_dataset(root, names, url=urls, sha256=sums)
    assert (root / "train.xml").read_bytes() == (folder / "train.xml").read_bytes()
    assert (root / "val.xml").read_text(encoding="utf-8") == "already here"
    assert sorted(p.name for p in root.iterdir()) == names  # no temporary files left

    (root / "train.xml").unlink()
    with pytest.raises(ChecksumError, match=r"train\.xml"):
        ensure_dataset(root, names, url=urls, sha256={**sums, "train.xml": "0" * 64})
    assert sorted(p.name for p in root.iterdir()) == ["val.xml"]  # nothing half-written


# --- data=mams --------------------------------------------------------------------------------


def test_mams_yaml_builds_from_a_local_folder(tmp_path: Path) -> None:
    """conf/data/mams.yaml with its own folder: no download, the SemEval reader, sorted aspects."""
    root = tmp_path / "mams"
    root.mkdir()
    for name in ("train.xml", "val.xml", "test.xml"):
        write(root / name, MAMS_STYLE)
    cfg = compose_train(["data=mams", f"data.root={root}"], tmp_path / "out")
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.aspects == ["food", "miscellaneous", "price", "staff"]
    assert dm.datasets["train"].labels.tolist() == [[0, 3, 0, 1], [2, 0, 1, 0]]


@pytest.mark.skipif(
    not (MAMS_DIR / "train.xml").is_file(),
    reason=f"MAMS-ACSA not found in {MAMS_DIR} (set ABSA_MAMS_DIR)",
)
def test_real_mams_counts_and_datamodule(tmp_path: Path) -> None:
    """The shared copy, read as data=mams reads it: the README's counts, eight aspects."""
    cfg = compose_train(["data=mams", f"data.root={MAMS_DIR}"], tmp_path)
    dm = instantiate(cfg.data)
    dm.prepare_data()  # the files are present: no download
    dm.setup("fit")
    dm.setup("test")
    sizes = {split: len(dataset) for split, dataset in dm.datasets.items()}
    assert sizes == {"train": 3149, "dev": 400, "test": 400}
    assert sum(sizes.values()) == 3949
    assert dm.aspects == sorted(
        ["food", "service", "staff", "price", "ambience", "menu", "place", "miscellaneous"]
    )
    train = dm.datasets["train"].labels
    assert int((train > 0).sum()) == 7090  # category mentions
    assert train.flatten().bincount(minlength=4).tolist()[1:] == [1929, 2084, 3077]
    assert bool(((train > 0).sum(dim=1) >= 2).all())  # two or more categories each
