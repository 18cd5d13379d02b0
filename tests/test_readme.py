"""Every image, table and file the README (and figures/README.md, data/README.md) points to exists."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s#]+)[^)]*\)|<img[^>]*src=\"([^\"]+)\"")


def local_targets(md: Path):
    for m in LINK.finditer(md.read_text()):
        target = m.group(1) or m.group(2)
        if not re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not checked (no network)
            yield target


@pytest.mark.parametrize("doc", ["README.md", "figures/README.md", "data/README.md"])
def test_local_links_and_images_exist(doc):
    md = ROOT / doc
    assert md.exists(), f"{doc} is missing"
    missing = [t for t in local_targets(md) if not (md.parent / t).exists()]
    assert not missing, f"{doc} points to files that do not exist: {missing}"


def test_readme_images_are_found_by_the_pattern(tmp_path):
    """The check above can fail: a README with an image that is not there."""
    md = tmp_path / "README.md"
    md.write_text("![fig](figures/cpu/05_improvement_forest.png) and <img src=\"a.png\"> [t](https://x.org)\n")
    assert list(local_targets(md)) == ["figures/cpu/05_improvement_forest.png", "a.png"]
