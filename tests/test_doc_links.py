"""scripts/check_doc_links.py: the repository's docs link only to files and anchors that exist,
and a broken file link or anchor is named and fails the check."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_doc_links.py"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_doc_links", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


def _run(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True,
                          text=True, timeout=60)


def test_the_repository_docs_have_no_broken_links() -> None:
    result = _run(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all resolve" in result.stdout


def test_a_missing_file_and_a_missing_anchor_are_each_named(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "# Tool\n\nSee [the guide](docs/guide.md#set-up) and [gone](docs/missing.md).\n")
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## Install\n\nBack to [the top](../README.md#tool), "
        "[nowhere](#no-such-section) and [a file](guide.md#install).\n")
    result = _run(tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    assert lines[0].startswith("README.md:3: broken link 'docs/guide.md#set-up'")
    assert "no heading or anchor '#set-up'" in lines[0]
    assert lines[1].startswith("README.md:3: broken link 'docs/missing.md'")
    assert "no file docs/missing.md" in lines[1]
    assert lines[2].startswith("docs/guide.md:5: broken link '#no-such-section'")


def test_fixing_the_links_makes_the_check_pass(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Tool\n\n[guide](docs/guide.md#set-up)\n")
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Set up\n")
    result = _run(tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == "1 links in 2 pages: all resolve"


@pytest.mark.parametrize(("heading", "expected"), [
    ("Set up and test", "set-up-and-test"),
    ("`vidcom2 ask VIDEO QUESTION [QUESTION ...]`", "vidcom2-ask-video-question-question-"),
    ("`vidcom2 batch ... --ray [ADDRESS]`: several GPUs, several machines",
     "vidcom2-batch----ray-address-several-gpus-several-machines"),
    ("Latency: full vs compressed, side by side", "latency-full-vs-compressed-side-by-side"),
    ("Tokens sent reach R", "tokens-sent-reach-r"),
    ("[Linked](other.md) heading", "linked-heading"),
    ("snake_case and `<img>` kept", "snake_case-and-img-kept"),
    ("Qwen2.5-VL / Qwen3-VL", "qwen25-vl--qwen3-vl"),
])
def test_slugs_follow_githubs_rule(heading: str, expected: str) -> None:
    assert checker.slug(heading) == expected


def test_anchors_count_repeats_skip_code_and_read_explicit_ids() -> None:
    text = ("# Title\n\n## Notes\n\n## Notes\n\n```bash\n# not a heading\n```\n\n"
            "<a id=\"frame-sizing\"></a>**Frame sizing.**\n\nSetext\n---\n")
    found = checker.anchors(text)
    assert {"title", "notes", "notes-1", "frame-sizing", "setext"} <= found
    assert "not-a-heading" not in found


def test_links_in_code_are_not_links() -> None:
    text = ("Use `[x](missing.md)` here.\n\n```\n[y](missing.md)\n```\n"
            "[real](present.md \"title\") and [ref]: <other file.md>\n")
    assert checker.links(text) == [(6, "present.md")]


def test_reference_definitions_and_web_links(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(
        "# T\n\n[web](https://example.com/x.md#y) [mail](mailto:a@b.c)\n\n"
        "[guide][g]\n\n[g]: docs/absent.md\n")
    result = _run(tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "README.md:7: broken link 'docs/absent.md': no file docs/absent.md"]
