"""`vidcom2 eval --ray`: the sweep's items go to Ray workers and come back scored, the records
those of a local run (a local Ray instance, a tiny model)."""

from __future__ import annotations

import json

import pytest
import ray
from jsonl_files import records
from odd_videos import encode
from tiny_models import TINY_PIXEL_BOUNDS
from typer.testing import CliRunner

from vidcom2_cli.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def comparable(row: dict) -> tuple:
    return (row["id"], row.get("answer"), row.get("pred"), row.get("correct"),
            row.get("error"), (row.get("tokens") or {}).get("visual_kept"))


def test_eval_on_ray_writes_the_records_of_a_local_run(tiny_checkpoints, tmp_path):
    root = tmp_path / "LongVideoBench"
    rows = [{"id": f"q{number}", "video_path": f"v{number % 2}.mp4", "question": "What is it?",
             "candidates": ["A square", "A circle"], "correct_choice": number % 2,
             "duration_group": 60} for number in range(4)]
    rows.append({**rows[0], "id": "gone", "video_path": "missing.mp4"})
    root.mkdir()
    (root / "lvb_val.json").write_text(json.dumps(rows))
    for number in range(2):
        (root / "videos").mkdir(exist_ok=True)
        encode(root / "videos" / f"v{number}.mp4", n=8 + number)
    args = ["eval", "longvideobench", "--data", str(root), "-m",
            str(tiny_checkpoints("qwen2_vl")), "--frames", "4", "--max-new-tokens", "2",
            "--device", "cpu", "--min-pixels", str(TINY_PIXEL_BOUNDS.min_pixels),
            "--max-pixels", str(TINY_PIXEL_BOUNDS.max_pixels), "--ratios", "1.0,0.5",
            "--methods", "vidcom2,random", "--json"]
    local = runner.invoke(app, [*args, "--out", str(tmp_path / "local.jsonl")])
    assert local.exit_code == 0, local.output
    on_ray = runner.invoke(app, [*args, "--out", str(tmp_path / "ray.jsonl"), "--ray", "local",
                                 "--workers", "1"])
    assert on_ray.exit_code == 0, on_ray.output
    expected = sorted(comparable(row) for row in records((tmp_path / "local.jsonl").read_text()))
    got = sorted(comparable(row) for row in records((tmp_path / "ray.jsonl").read_text()))
    assert got == expected and len(got) == 5 * 3

    def scores(output: str) -> list[tuple]:
        return [(row["subset"], row["method"], row["ratio"], row["questions"], row["errors"],
                 row["score"]) for row in json.loads(output)["rows"]]

    assert scores(on_ray.stdout) == scores(local.stdout)
