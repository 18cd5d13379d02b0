"""What the README (and the other Markdown pages) claim holds in the files: every link and image
resolves, the two commands are make targets, every notebook has a row with its results, the front page
stays short, and the results sit in one delimited section that can be rewritten after a run."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s#]+)[^)]*\)|<img[^>]*src=\"([^\"]+)\"")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGES = ["README.md", "figures/README.md", "data/README.md",
         *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def local_targets(md: Path):
    for m in LINK.finditer(md.read_text()):
        target = m.group(1) or m.group(2)
        if not re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not checked (no network)
            yield target


@pytest.mark.parametrize("doc", PAGES)
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


README = (ROOT / "README.md").read_text()


def test_readme_is_a_front_page():
    assert len(README.splitlines()) <= 150, "README.md is over 150 lines: move detail one link away into docs/"
    first = README.split("\n## ", 2)
    assert "arXiv 2401.01520" in first[0], "the first paragraph says what this is"


def test_the_results_sit_in_one_delimited_section_with_the_headline_figure():
    begin, end = README.count("<!-- results: begin"), README.count("<!-- results: end -->")
    assert begin == end == 1, "one <!-- results: begin --> … <!-- results: end --> section"
    section = README.split("<!-- results: begin")[1].split("<!-- results: end -->")[0]
    assert "![" in section and "figures/cpu/05_improvement_forest.png" in section
    assert README.index("<!-- results: begin") < README.index("```bash"), "the verdict comes before the commands"


def test_the_commands_shown_are_make_targets():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    shown = re.findall(r"(?m)^make (\w[\w-]*)", block)
    assert shown == ["reproduce", "test"], shown
    makefile = (ROOT / "Makefile").read_text()
    for target in shown:
        assert re.search(rf"(?m)^{target}:", makefile), f"README shows `make {target}`, the Makefile has no such target"


def test_every_notebook_row_links_its_executed_results():
    for nb in NOTEBOOKS:
        row = next((ln for ln in README.splitlines() if ln.startswith(f"| `{nb.stem}` |")), None)
        assert row, f"README's notebook table has no row for {nb.stem}"
        assert f"[results](figures/cpu/{nb.name})" in row, row
    assert "once the repository is public" in README, "say next to the badges that they need a public repository"


def test_nothing_in_docs_repeats_the_readme_verdict():
    """Said once: the verdict paragraph lives in the README's results section only."""
    verdict = README.split("<!-- results: begin")[1].split("<!-- results: end -->")[0]
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s", " ".join(verdict.split())) if len(s.strip()) > 60]
    for page in (ROOT / "docs").glob("*.md"):
        text = " ".join(page.read_text().split())
        assert not [s for s in sentences if s in text], f"{page.name} repeats the README's verdict"
