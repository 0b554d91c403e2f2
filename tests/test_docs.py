"""The documentation holds together: README.md is a front door (at most 300 lines), and every relative link in it and
in docs/*.md names an existing file and, with `#anchor`, an existing heading of that file (GitHub's heading slugs)."""
import glob
import os
import re
import unicodedata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:.|\n)*?\1")
# [text](target) and ![alt](target); the text may wrap onto the next line, the target may not contain spaces
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)


def _text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _prose(text):
    """The text without fenced code blocks, without indented code blocks and without code spans."""
    text = FENCE.sub("", text)
    kept, in_code, previous_blank = [], False, True
    for line in text.split("\n"):
        blank = not line.strip()
        if in_code and not (blank or line.startswith("    ")):
            in_code = False
        if not in_code and previous_blank and line.startswith("    "):
            in_code = True  # an indented code block starts after a blank line
        if not in_code:
            kept.append(line)
        previous_blank = blank
    return CODE_SPAN.sub("", "\n".join(kept))


def slug(heading):
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFC", text).strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor of a Markdown file's headings, repeated headings numbered as GitHub does (-1, -2, ...)."""
    seen, result = {}, set()
    for _, title in HEADING.findall(FENCE.sub("", _text(path))):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def links(path):
    """The targets of the Markdown links and images of a file, outside code."""
    return LINK.findall(_prose(_text(path)))


def test_slug_matches_github():
    assert slug("Long runs and preemption") == "long-runs-and-preemption"
    assert slug("1.1 Affinity") == "11-affinity"
    assert slug("Performance: `python tools/bench_segmentation.py`") == "performance-python-toolsbench_segmentationpy"
    assert slug("The `snl` library: install, use, torch.hub, export") == "the-snl-library-install-use-torchhub-export"


def test_link_parser_sees_wrapped_text_and_skips_code(tmp_path):
    text = "see [a wrapped\nlink](docs/x.md#y) and `[not](a-link.md)`\n\n    [also](code.md)\n\n![img](i.png)\n"
    text += "```sh\n[fenced](f.md)\n```\n"
    path = tmp_path / "probe.md"
    path.write_text(text, encoding="utf-8")
    assert links(str(path)) == ["docs/x.md#y", "i.png"]


def test_readme_is_a_front_door():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        n = len(f.read().splitlines())
    assert n <= 300, f"README.md has {n} lines; move manual material to docs/ (at most 300)"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
        if not os.path.exists(linked):
            broken.append(f"{target}: no file {os.path.relpath(linked, ROOT)}")
        elif anchor and linked.endswith(".md") and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {os.path.relpath(linked, ROOT)}")
    assert not broken, f"{os.path.relpath(page, ROOT)}: " + "; ".join(broken)
