#!/usr/bin/env python3
"""Check that every relative link in README.md and docs/*.md leads somewhere.

A link's file must exist (relative to the page that holds it) and, where the link names an
``#anchor`` in a Markdown file, that file must have a heading with that anchor (GitHub's rule:
the heading's text in lower case, punctuation other than ``-`` and ``_`` dropped, each space
a ``-``, ``-1``, ``-2``, ... after repeats) or an explicit ``<a id="...">`` / ``name=``.
Links with a scheme (https:, mailto:) are not followed. Code blocks and code spans are skipped.

Usage: ``python scripts/check_doc_links.py [ROOT]`` (ROOT defaults to this repository).
Prints one line per broken link (``FILE:LINE: ...``) and exits 1 if there is any; stdlib only.
"""

from __future__ import annotations

import html
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_EXPLICIT_ANCHOR = re.compile(r"""<a\s[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.I)
# [text](target "title"): the text may hold one level of brackets; the target may be <...>.
_INLINE_LINK = re.compile(
    r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>\n]*>|[^\s)]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)", re.M)
_HTML_HREF = re.compile(r"""<a\s[^>]*?\bhref\s*=\s*["']([^"']+)["']""", re.I)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_LINK_IN_HEADING = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)")
_HTML_TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class BrokenLink:
    page: Path
    line: int
    target: str
    reason: str

    def render(self, root: Path) -> str:
        return f"{_shown(self.page, root)}:{self.line}: broken link '{self.target}': {self.reason}"


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def blank_code_blocks(text: str) -> str:
    """The text with every fenced code block's lines emptied (line numbers stay)."""
    lines = text.split("\n")
    fence: str | None = None
    for index, line in enumerate(lines):
        opened = _FENCE.match(line)
        if fence is None:
            if opened:
                fence = opened.group(1)
                lines[index] = ""
        else:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence) \
                    and not line.strip().lstrip(fence[0]):
                fence = None
            lines[index] = ""
    return "\n".join(lines)


def blank_code_spans(text: str) -> str:
    """The text with each inline code span replaced by spaces of its length (newlines kept)."""
    return _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def heading_text(heading: str) -> str:
    """A heading's text as rendered: code spans verbatim; elsewhere links reduced to their
    text, HTML tags dropped and entities decoded."""
    parts = []
    position = 0
    for span in _CODE_SPAN.finditer(heading):
        parts.append(_rendered(heading[position:span.start()]))
        parts.append(span.group(2))
        position = span.end()
    parts.append(_rendered(heading[position:]))
    return "".join(parts).strip()


def _rendered(markdown: str) -> str:
    text = _LINK_IN_HEADING.sub(lambda m: m.group(1), markdown)
    return html.unescape(_HTML_TAG.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's Markdown text (before de-duplication)."""
    text = heading_text(heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown page offers: its headings' slugs and explicit ``<a id>``s."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    lines = blank_code_blocks(text).split("\n")
    headings = []
    for index, line in enumerate(lines):
        atx = _ATX_HEADING.match(line)
        if atx:
            headings.append(atx.group(2))
        elif (index > 0 and lines[index - 1].strip() and _SETEXT_UNDERLINE.match(line)
              and not _ATX_HEADING.match(lines[index - 1])
              and not lines[index - 1].lstrip().startswith(("-", "*", "|", ">"))):
            headings.append(lines[index - 1].strip())
    for heading in headings:
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found.update(_EXPLICIT_ANCHOR.findall(text))
    return found


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link outside code, in order."""
    scanned = blank_code_spans(blank_code_blocks(text))
    found = []
    for pattern in (_INLINE_LINK, _REFERENCE_DEFINITION, _HTML_HREF):
        for match in pattern.finditer(scanned):
            target = match.group(1)
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            found.append((scanned.count("\n", 0, match.start(1)) + 1, target))
    return sorted(found)


def check_page(page: Path, cache: dict[Path, set[str]]) -> list[BrokenLink]:
    broken = []
    for line, target in links(page.read_text(encoding="utf-8")):
        if _SCHEME.match(target) or target.startswith("//"):
            continue
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        if path_part.startswith("/"):
            broken.append(BrokenLink(page, line, target, "absolute path; use a relative link"))
            continue
        destination = (page.parent / path_part).resolve() if path_part else page.resolve()
        if not destination.exists():
            broken.append(BrokenLink(page, line, target, f"no file {path_part}"))
            continue
        if not anchor or destination.is_dir() or destination.suffix.lower() != ".md":
            continue
        if destination not in cache:
            cache[destination] = anchors(destination.read_text(encoding="utf-8"))
        if unquote(anchor) not in cache[destination]:
            where = path_part or page.name
            broken.append(BrokenLink(page, line, target, f"no heading or anchor '#{anchor}' "
                                                         f"in {where}"))
    return broken


def pages(root: Path) -> list[Path]:
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    docs = root / "docs"
    if docs.is_dir():
        found.extend(sorted(docs.glob("*.md")))
    return found


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: check_doc_links.py [ROOT]", file=sys.stderr)
        return 2
    root = Path(argv[0] if argv else Path(__file__).resolve().parent.parent).resolve()
    checked = pages(root)
    if not checked:
        print(f"{root}: no README.md or docs/*.md to check", file=sys.stderr)
        return 2
    cache: dict[Path, set[str]] = {}
    broken = [link for page in checked for link in check_page(page, cache)]
    for link in broken:
        print(link.render(root))
    if broken:
        print(f"{len(broken)} broken link(s) in {len(checked)} page(s)", file=sys.stderr)
        return 1
    total = sum(len(links(page.read_text(encoding="utf-8"))) for page in checked)
    print(f"{total} links in {len(checked)} pages: all resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
