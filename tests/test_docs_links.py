"""Every relative link in the documentation leads somewhere: the file exists and, for `#anchor`, so
does the heading, by GitHub's rules for heading anchors. No network: web links are not followed.

The README is the landing page and the pages under docs/ hold the details; they link to each other
by section, so moving or renaming a heading breaks links that nothing else would notice.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The documentation whose links are checked: the README, every page under docs/, the benchmarks' and
# the fixtures' own READMEs.
PAGES = sorted(
    {ROOT / "README.md", ROOT / "bench" / "README.md", ROOT / "tests" / "fixtures" / "README.md"}
    | set((ROOT / "docs").rglob("*.md"))
)

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), an optional "title" after the target.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+.*)?$")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto:, ...


def _read(path):
    return path.read_text(encoding="utf-8")


def _prose_lines(text):
    """The lines outside fenced code blocks (links and headings in code are not links or headings)."""
    fenced = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if match:
            if fenced is None:
                fenced = match.group(1)
            elif match.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            yield line


def slug(heading):
    """GitHub's anchor for a heading: its rendered text, lower-cased, with every character that is
    not a letter, digit, underscore, hyphen or space dropped, and each space made a hyphen."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags render as nothing
    text = text.strip().lower()
    return "".join(c for c in text if c.isalnum() or c in "_- ").replace(" ", "-")


def anchors(text):
    """Every anchor a page has: heading slugs (a repeated one gets -1, -2, ...) and HTML a name/id."""
    found, seen = set(), {}
    for line in _prose_lines(text):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def links(text):
    """The link targets of a page's prose (inline code left out: `[x](y)` in code is not a link)."""
    for line in _prose_lines(text):
        prose = INLINE_CODE.sub("", line)
        yield from LINK.findall(prose)
        match = REFERENCE.match(prose)
        if match:
            yield match.group(1)


def broken_links(page, root=ROOT):
    """(target, why) for each relative link of `page` that leads nowhere."""
    problems = []
    for target in links(_read(page)):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            problems.append((target, "no such file"))
            continue
        if root.resolve() not in (destination, *destination.parents):
            problems.append((target, "outside the repository"))
            continue
        if anchor:
            if destination.is_dir() or destination.suffix != ".md":
                problems.append((target, "an anchor into something that is not a Markdown page"))
            elif anchor not in anchors(_read(destination)):
                problems.append((target, "no such heading"))
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    problems = broken_links(page)
    assert not problems, "\n".join(f"{target}: {why}" for target, why in problems)


def test_the_readme_links_every_docs_page():
    """The README's index names every page under docs/, so none is reachable only by chance."""
    index = ROOT / "README.md"
    listed = {(index.parent / target.partition("#")[0]).resolve() for target in links(_read(index))}
    pages = {page.resolve() for page in (ROOT / "docs").rglob("*.md")}
    assert sorted(str(page.relative_to(ROOT)) for page in pages - listed) == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("What `verify` checks", "what-verify-checks"),
        ("A card's fields", "a-cards-fields"),
        ("The hold-expiry sweeper (`clock` process)", "the-hold-expiry-sweeper-clock-process"),
        ("As built, measured (2026-11-27)", "as-built-measured-2026-11-27"),
        ("Upgrading from v1 -> v2", "upgrading-from-v1---v2"),
        ("See [the layout](redis-layout.md) here", "see-the-layout-here"),
        ("REDIS_URL and `REDIS_CLUSTER`", "redis_url-and-redis_cluster"),
    ],
)
def test_slug_follows_githubs_rules(heading, anchor):
    assert slug(heading) == anchor


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Alpha\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#alpha) [ok](docs/a.md#twice-1) [ok](#here) [web](https://x.test/y#z)\n"
        "# Here\n"
        "`[code](nowhere.md)`\n"
        "```\n[fenced](nowhere.md)\n```\n"
        "[gone](docs/b.md) [no heading](docs/a.md#beta) [third](docs/a.md#twice-2) [self](#nowhere)\n"
        "[ref]: docs/c.md\n",
        encoding="utf-8",
    )
    assert broken_links(page, root=tmp_path) == [
        ("docs/b.md", "no such file"),
        ("docs/a.md#beta", "no such heading"),
        ("docs/a.md#twice-2", "no such heading"),
        ("#nowhere", "no such heading"),
        ("docs/c.md", "no such file"),
    ]
