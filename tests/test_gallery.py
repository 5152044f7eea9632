"""index.html in a generate folder: parsed like a browser would (no browser in CI), every file it names exists,
every clip has its card, nothing comes from the network, and eval's numbers appear once eval has run."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from avdit_cli.config import Config
from avdit_cli.metrics import FeatureCache
from avdit_cli.pipelines import gallery
from avdit_cli.pipelines.evaluate import evaluate
from avdit_cli.pipelines.generate import GenerateOptions, GenerateResult, generate
from test_generate import STEPS, make_run  # tests/ is on sys.path

pytestmark = pytest.mark.usefixtures("one_thread")


class Page(HTMLParser):
    """What a browser would fetch or link from the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def refs(self) -> list[str]:
        return [a[k] for _, a in self.tags for k in ("src", "href", "poster", "srcset", "data") if k in a]

    def of(self, tag: str, attr: str) -> list[str]:
        """The attribute of every such tag, as a file name (a media fragment such as #t=0 left out)."""
        return [a[attr].partition("#")[0] for t, a in self.tags if t == tag and attr in a]


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def check_self_contained(folder: Path) -> Page:
    """Every reference is a relative path to a file in the folder; nothing would be fetched from elsewhere."""
    text = (folder / gallery.INDEX).read_text(encoding="utf-8")
    page = parse(folder / gallery.INDEX)
    for ref in page.refs():
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc, ref  # no http:, file:, data:, //host
        assert not ref.startswith("/") and ".." not in Path(unquote(parts.path)).parts, ref
        assert (folder / unquote(parts.path)).is_file(), f"{ref} is not in {folder}"
    lowered = text.lower()
    for marker in ("<script", "<link", "@import", "url(", "http://", "https://", "@font-face"):
        assert marker not in lowered, marker
    return page


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[GenerateResult, Config]:
    run, cfg = make_run(tmp_path_factory.mktemp("run"))
    out = tmp_path_factory.mktemp("gen") / "out"
    result = generate(GenerateOptions(out_dir=out, num=3, checkpoint=run, steps=STEPS, seed=5, batch_size=2))
    return result, cfg


def test_every_clip_has_a_card_and_every_reference_exists(made: tuple[GenerateResult, Config]) -> None:
    result, _ = made
    folder = result.out_dir
    assert result.gallery == folder / gallery.INDEX
    page = check_self_contained(folder)
    clips = sorted(p.name for p in folder.glob("sample_*.mp4"))
    assert len(clips) == 3
    assert page.of("video", "src") == clips  # one player per clip, in sample order
    assert page.of("video", "controls") == [""] * 3 and not page.of("video", "muted")  # with sound
    mels = page.of("img", "src")
    assert [m for m in mels if m.endswith(gallery.MEL_SUFFIX)] == [gallery.mel_picture_name(c) for c in clips]
    assert "contact_sheet.png" in mels
    text = (folder / gallery.INDEX).read_text()
    samples = json.loads((folder / "samples.json").read_text())
    for rec in samples["samples"]:  # the card says how the clip was made
        card = text[text.index(f'id="{Path(rec["file"]).stem}"'):]
        card = card[: card.index("</figure>")]
        for shown in (f"<dd>{rec['seed']}</dd>", f"ddim, {STEPS} steps", Path(rec["run"]).name,
                      Path(rec["checkpoint"]).name, rec["checkpoint_sha256"][:12]):
            assert shown in card, shown
    assert "Not scored yet" in text  # no metrics.json yet


def test_mel_pictures_are_pictures_of_each_clip(made: tuple[GenerateResult, Config]) -> None:
    from PIL import Image

    folder = made[0].out_dir
    pictures = [Image.open(folder / gallery.mel_picture_name(p.name)) for p in sorted(folder.glob("*.mp4"))]
    assert all(p.size == (160, gallery.MEL_HEIGHT) and p.mode == "RGB" for p in pictures)  # 1.6 s at hop 160
    assert len({p.tobytes() for p in pictures}) == 3  # each clip its own


def test_eval_refreshes_the_page_with_its_metrics(made: tuple[GenerateResult, Config], tmp_path: Path) -> None:
    folder = tmp_path / "copy"  # the zip-and-share case: the folder works wherever it is
    shutil.copytree(made[0].out_dir, folder)
    cfg = made[1].replace(**{"eval.metrics": ["av-align"], "eval.num_samples": 3})
    evaluate(folder, cfg, feature_cache=FeatureCache(tmp_path / "features"))  # AV-Align needs no download
    page = check_self_contained(folder)
    text = (folder / gallery.INDEX).read_text()
    report = json.loads((folder / "metrics.json").read_text())
    value = report["metrics"]["av-align"]["display_value"]
    assert "Not scored yet" not in text and "<td>av-align</td>" in text and f"{value:.4g}" in text
    assert "metrics.json" in page.of("a", "href")
    assert len(page.of("video", "src")) == 3


def test_text_from_the_records_is_escaped(made: tuple[GenerateResult, Config], tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    shutil.copytree(made[0].out_dir, folder)
    samples = json.loads((folder / "samples.json").read_text())
    samples["run"] = samples["samples"][0]["run"] = "/runs/<b>bold</b>&co"
    (folder / "samples.json").write_text(json.dumps(samples))
    gallery.write_gallery(folder)
    text = (folder / gallery.INDEX).read_text()
    assert "<b>" not in text and "&lt;b&gt;bold&lt;/b&gt;&amp;co" in text
    check_self_contained(folder)


def test_overwrite_replaces_the_gallery_and_its_pictures(made: tuple[GenerateResult, Config],
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "again"
    shutil.copytree(made[0].out_dir, folder)
    run = Path(json.loads((folder / "samples.json").read_text())["run"])
    generate(GenerateOptions(out_dir=folder, num=1, checkpoint=run, steps=STEPS, overwrite=True))
    assert sorted(p.name for p in folder.glob(f"*{gallery.MEL_SUFFIX}")) == ["sample_00000.mel.png"]
    assert parse(folder / gallery.INDEX).of("video", "src") == ["sample_00000.mp4"]
    check_self_contained(folder)
