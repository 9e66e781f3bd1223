"""One line means one line (issue 15): error text is never markup, library logs stay quiet,
option errors name the option typed and come before the model loads, the hub fails fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from jsonl_files import jsonl, records
from odd_videos import corrupt_one_packet, encode
from PIL import Image
from typer.testing import CliRunner

from vidcom2_cli.cli import app
from vidcom2_cli.cli.checks import sigterm_as_interrupt

SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
CLIP = SAMPLES / "color_change.mp4"
FAST = ["--frames", "4", "--max-new-tokens", "2", "--device", "cpu"]
runner = CliRunner()


def invoke(*args: object, input: str | None = None):
    return runner.invoke(app, [str(arg) for arg in args], input=input)


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def test_a_message_with_markup_brackets_prints_as_one_line(tmp_path):
    folder = tmp_path / "clips["
    folder.mkdir()
    missing = folder / "path].mp4"  # the message holds "[/path]", rich's closing-tag syntax
    result = invoke("info", missing)
    assert result.exit_code == 2 and result.stdout == ""
    assert str(missing) in one_line(result)


def test_decoder_logs_never_reach_stderr(tmp_path):
    # decord's and FFmpeg's C code write to file descriptor 2 directly: only a separate
    # process shows whether anything gets through.
    broken = corrupt_one_packet(encode(tmp_path / "clip.mp4"))
    code = ("import sys; from vidcom2_cli.video import load_video; "
            "v = load_video(sys.argv[1], num_frames=24); print(v.info.decoder, "
            "len(v.substituted_frames))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code, str(broken)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pyav", "1"]
    assert done.stderr == ""


@pytest.mark.parametrize(("args", "needle"), [
    (["--ratios", "1,1.5"], "--ratios:"),
    (["--methods", "vidcom2,magic"], "--methods:"),
    (["--frames", "0"], "--frames:"),
    (["--device", "gpu"], "--device:"),
])
def test_bench_option_errors_name_the_option_typed(offline_hub, args, needle):
    result = invoke("bench", CLIP, "--model", "nobody/no-such-model", *args)
    assert result.exit_code == 2 and result.stdout == ""
    line = one_line(result)
    assert needle in line
    assert "num_frames" not in line and "--ratio:" not in line and "--method:" not in line


@pytest.mark.parametrize(("args", "needle"), [
    (["--frames", "0"], "--frames: must be at least 1"),
    (["--max-frames", "0", "--fps", "1"], "--max-frames:"),
    (["--temperature", "0.7"], "--temperature: only applies with --sample"),
    (["--top-p", "0.9"], "--top-p: only applies with --sample"),
    (["--sample", "--temperature", "0"], "--temperature: must be a positive number"),
    (["--sample", "--top-p", "1.5"], "--top-p: must be in (0, 1]"),
    (["--json", "--quiet"], "--json and --quiet"),
    (["--heatmap", "sheet.gif"], "--heatmap:"),
    (["--device", "gpu"], "this machine's: cpu"),
])
def test_ask_option_errors_come_before_the_model(offline_hub, args, needle):
    # The model does not exist: an option error that says so was checked before loading it.
    result = invoke("ask", CLIP, "What?", "--model", "nobody/no-such-model", *args)
    assert result.exit_code == 2 and result.stdout == ""
    assert needle in one_line(result)


def test_missing_local_model_folder_says_no_such_folder(tmp_path):
    result = invoke("ask", CLIP, "What?", "--model", tmp_path / "models" / "qwen")
    assert result.exit_code == 2
    assert "no such folder" in one_line(result)


def test_unreachable_hub_fails_at_once_with_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    result = invoke("ask", CLIP, "What?", "--model", "nobody/no-such-model")
    assert result.exit_code == 1 and result.stdout == ""
    line = one_line(result)
    assert "cannot be reached" in line and "random:" in line and "--model" in line
    # huggingface_hub 1.0 replaced the huggingface-cli command with hf
    assert "(hf download nobody/no-such-model --local-dir FOLDER)" in line
    assert "huggingface-cli" not in line
    assert "Retrying" not in result.stderr


def test_sigterm_stops_like_ctrl_c():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before


# --- with a tiny model -------------------------------------------------------------------------


@pytest.mark.slow
def test_heatmap_jpg_is_a_real_jpeg(tiny_checkpoints, tmp_path):
    target = tmp_path / "sheet.jpg"
    result = invoke("ask", CLIP, "What?", "--model", tiny_checkpoints("llava_onevision"),
                    *FAST, "--heatmap", target, "--quiet")
    assert result.exit_code == 0, result.stderr
    with Image.open(target) as image:
        assert image.format == "JPEG"


@pytest.mark.slow
def test_batch_where_every_item_fails_exits_1_naming_the_resolved_paths(tiny_checkpoints,
                                                                        tmp_path):
    source = jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "video": "gone.mp4", "question": "What?"},
        {"id": "b", "video": "sub/also-gone.mp4", "question": "What?"},
    ])
    out = tmp_path / "out.jsonl"
    result = invoke("batch", source, "--out", out, "--model", tiny_checkpoints("qwen2_vl"),
                    *FAST)
    assert result.exit_code == 1
    first, second = records(out.read_text())
    assert str(tmp_path / "gone.mp4") in first["error"]
    assert str(tmp_path / "sub" / "also-gone.mp4") in second["error"]
    assert "every one of the 2 items failed" in result.stderr


@pytest.mark.slow
def test_resumed_batch_summarises_the_whole_output(tiny_checkpoints, tmp_path):
    rows = [{"id": str(i), "video": str(CLIP), "question": "What?"} for i in range(3)]
    out = tmp_path / "out.jsonl"
    model = ["--model", tiny_checkpoints("qwen2_vl"), *FAST]
    first = invoke("batch", jsonl(tmp_path / "two.jsonl", rows[:2]), "--out", out, *model)
    assert first.exit_code == 0, first.stderr
    rest = invoke("batch", jsonl(tmp_path / "all.jsonl", rows), "--out", out, "--resume",
                  *model)
    assert rest.exit_code == 0, rest.stderr
    assert len(records(out.read_text())) == 3
    assert f"whole output {out}: 3 records (3 answered, 0 errors)" in rest.stderr
    assert json.loads(out.read_text().splitlines()[-1])["id"] == "2"


# --- starting fast (issue 15, section 3) ------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--help"], ["--version"], ["models"], ["info", str(CLIP)],
    ["ask", str(CLIP), "q", "--frames", "0"], ["bench", str(CLIP), "--ratios", "2"],
    ["ask", str(CLIP), "q", "--device", "gpu"], ["batch", "in.jsonl", "--out", "o", "--batch-size",
                                                 "0"],
    ["ask", str(CLIP), "q", "--method", "vidcom3"], ["bench", str(CLIP), "--methods", "fastvd"],
    ["ask", str(CLIP), "q", "--model", "random:llava-ov-7b"], ["ask", "/no/such.mp4", "q"],
    ["chat", str(SAMPLES)], ["models", "qwen9"], ["methods", "vidcom3"],
    ["ask", str(CLIP), "q", "--dtype", "bf61"], ["serve", "--attn", "spda"],
    ["ask", str(CLIP), "q", "--min-pixels", "10", "--max-pixels", "5"],
], ids=["help", "version", "models", "info", "ask bad option", "bench bad option", "device",
        "batch bad option", "unknown method", "unknown bench method", "unknown preset",
        "missing video", "a folder as video", "unknown family", "unknown method name",
        "unknown dtype", "unknown attention", "pixel bounds crossed"])
def test_commands_without_a_model_never_import_torch(argv):
    code = ("import sys; from vidcom2_cli.cli import main; sys.argv[0] = 'vidcom2'\n"
            "try:\n    main()\nexcept SystemExit as done:\n    code = done.code\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), code)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.stdout.strip().splitlines()[-1].startswith("[]"), done.stdout + done.stderr


@pytest.mark.parametrize(("argv", "expected"), [
    (["ask", str(CLIP), "q", "--method", "vidcom3"], "--method: unknown compression method "
     "'vidcom3' (did you mean 'vidcom2'?)"),
    (["bench", str(CLIP), "--methods", "vidcom2,fastvd"], "--methods: unknown compression method "
     "'fastvd' (did you mean 'fastvid'?)"),
    (["ask", str(CLIP), "q", "-m", "random:llava-ov-7b"], "--model: no random-weight preset "
     "'llava-ov-7b' (did you mean 'llava-onevision-7b'?)"),
    (["ask", "/no/such.mp4", "q"], "/no/such.mp4: no such file"),
    (["ask", str(SAMPLES), "q"], f"{SAMPLES}: is a directory, not a video file"),
    (["cache", "info", "--feature-cache", "/no/such/cache"],
     "--feature-cache: /no/such/cache does not exist"),
    (["cache", "clear", "--feature-cache", "/no/such/cache"],
     "--feature-cache: /no/such/cache does not exist"),
    (["models", "qwen2.5vl"], None), (["methods", "fastvid"], None),
    (["ask", str(CLIP), "q", "--dtype", "bf61"], "--dtype: unknown dtype 'bf61' (did you mean "
     "'bf16'?)"),
    (["bench", str(CLIP), "--attn", "spda"], "--attn: unknown attention 'spda' (did you mean "
     "'sdpa'?)"),
])
def test_refusals_suggest_the_nearest_name(argv, expected):
    result = invoke(*argv)
    if expected is None:  # the name is known: the command answers
        assert result.exit_code == 0, result.stderr
        return
    assert result.exit_code == 2
    assert one_line(result).startswith(f"error: {expected}")


def test_a_value_from_the_environment_is_named_as_set(monkeypatch):
    monkeypatch.setenv("VIDCOM2_RATIO", "2")
    result = invoke("ask", CLIP, "q")
    assert result.exit_code == 2
    assert one_line(result).startswith("error: VIDCOM2_RATIO (from the environment): ratio "
                                       "must be in (0, 1]")
    typed = invoke("ask", CLIP, "q", "--ratio", "2")  # typed, it is the option
    assert one_line(typed).startswith("error: --ratio: ratio must be in (0, 1]")


def test_an_option_of_another_family_is_refused_before_the_model_loads(tiny_checkpoints,
                                                                         monkeypatch):
    from vidcom2_cli.engine import Engine

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Engine, "load", no_load)
    result = invoke("ask", CLIP, "q", "-m", tiny_checkpoints("llava_onevision"), *FAST,
                    "--method", "fastvid", "--method-option", "ignore=0.9")
    assert result.exit_code == 2
    line = one_line(result)
    assert "--method-option" in line and "'ignore' exists only for the Qwen" in line
    assert "not for LLaVA-OneVision" in line


def test_version_and_completion():
    result = invoke("--version")
    assert result.exit_code == 0
    from vidcom2_cli import __version__

    first, libraries = result.stdout.strip().splitlines()
    assert first == f"vidcom2-cli {__version__}"
    import torch
    import transformers

    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
    assert libraries.startswith(f"torch {torch.__version__.split('+')[0]} ({cuda}), transformers "
                                f"{transformers.__version__}, Python ")
    assert "--install-completion" in invoke("--help").stdout


def test_environment_defaults_and_the_command_line_wins(offline_hub, monkeypatch):
    monkeypatch.setenv("VIDCOM2_FRAMES", "0")
    from_env = invoke("ask", CLIP, "What?", "--model", "nobody/no-such-model")
    # named as the user set it: the variable, not an option they never typed
    assert from_env.exit_code == 2 and "VIDCOM2_FRAMES" in one_line(from_env)
    monkeypatch.setenv("VIDCOM2_MODEL", "nobody/from-the-environment")
    given = invoke("ask", CLIP, "What?", "--frames", "4")  # --frames wins; the model is env's
    assert given.exit_code == 2
    assert "nobody/from-the-environment" in one_line(given)
    assert "--help" not in given.stderr
    assert "VIDCOM2_MODEL" in invoke("ask", "--help").stdout


@pytest.mark.slow
def test_output_says_what_ran(tiny_checkpoints):
    import torch

    from vidcom2_cli import __version__
    from vidcom2_cli.models.loading import resolve_dtype

    model = ["--model", tiny_checkpoints("llava_onevision"), *FAST]
    payload = json.loads(invoke("ask", CLIP, "What?", *model, "--json").stdout)
    run = payload["run"]
    assert run["version"] == __version__ and run["device"] == "cpu"
    auto = str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    assert run["dtype"] == auto and run["attention"] in ("sdpa", "eager")
    assert run["model_load_s"] > 0
    assert payload["frames"]["decoder"] == "decord" and payload["frames"]["substituted"] == {}
    human = invoke("ask", CLIP, "What?", *model)
    assert f"vidcom2-cli {__version__} · model loaded in" in human.stdout
    rows = json.loads(invoke("bench", CLIP, *model, "--ratios", "1,0.5", "--repeats", "1",
                             "--warmup", "0", "--json").stdout)
    assert all(row["run"]["version"] == __version__ and row["run"]["model_load_s"] > 0
               for row in rows)
    records = [json.loads(line) for line in invoke(
        "batch", "-", "--out", "-", *model, input=json.dumps(
            {"id": 1, "video": str(CLIP), "question": "What?"}) + "\n").stdout.splitlines()]
    assert records[0]["run"]["device"] == "cpu" and records[0]["run"]["model_load_s"] > 0


@pytest.mark.slow
def test_ask_json_says_which_frames_were_substituted(tiny_checkpoints, tmp_path):
    broken = corrupt_one_packet(encode(tmp_path / "clip.mp4"))  # 24 frames, one packet noise
    result = invoke("ask", broken, "What?", "--model", tiny_checkpoints("llava_onevision"),
                    "--frames", "24", "--max-new-tokens", "2", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    frames = json.loads(result.stdout)["frames"]
    assert frames["decoder"] == "pyav" and frames["stream_index"] == 0
    assert frames["source_frames"] == 24 and frames["indices"] == list(range(24))
    (missing, used), = frames["substituted"].items()
    assert abs(int(missing) - used) == 1


@pytest.mark.parametrize(("argv", "needle"), [
    (["--bogus"], "No such option: --bogus"),
    (["ask"], "Missing argument 'video'"),
    (["ask", "clip.mp4", "q", "--frames", "abc"], "'--frames'"),
    (["batch", "in.jsonl", "--out", "o.jsonl", "--ray", "bogus://x"], "bogus://x"),
])
def test_usage_errors_are_one_line_through_the_entry_point(argv, needle):
    """click's usage box (usage line, hint, framed error) becomes one line naming the problem
    and where to look, exit 2, when the command runs as users run it."""
    code = ("import sys; from vidcom2_cli.cli import main; "
            "sys.argv = ['vidcom2', *sys.argv[1:]]; main()")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "--help" in lines[0]
    assert done.stdout == ""


@pytest.mark.slow
def test_in_a_terminal_the_answer_streams_then_the_report(tiny_checkpoints, monkeypatch):
    from rich.console import Console

    from vidcom2_cli import cli

    model = ["--model", tiny_checkpoints("qwen2_vl"), *FAST]
    expected = json.loads(invoke("ask", CLIP, "What?", *model, "--json").stdout)["answer"]
    monkeypatch.setattr(cli.console, "stdout", Console(force_terminal=True, width=160))
    result = invoke("ask", CLIP, "What?", *model)
    assert result.exit_code == 0, result.stderr
    first, report = result.stdout.split("\n", 1)
    assert first.startswith("answer: ") and first.removeprefix("answer: ").strip() == expected
    assert "Retained tokens" in report and "Timing" in report
    assert "╭" not in report  # the answer is not printed again in a panel


@pytest.mark.slow
def test_several_questions_show_the_status_line_while_each_is_worked_out(tiny_checkpoints,
                                                                         monkeypatch):
    """Not only one question: with three, the stage line is up while each answer is being
    worked out (the shared work with the first), and down while an answer prints."""
    from contextlib import contextmanager

    from vidcom2_cli.cli import runtime

    shown: list[str] = []
    real = runtime.stage_status

    @contextmanager
    def recorded(show):
        shown.append("up" if show else "off")
        with real(False) as stop:
            yield stop
        shown.append("down")

    monkeypatch.setattr(runtime, "stage_status", recorded)
    model = ["--model", tiny_checkpoints("qwen2_vl"), *FAST]
    result = invoke("ask", CLIP, "What?", "Why?", "Where?", *model)
    assert result.exit_code == 0, result.stderr
    assert shown.count("up") >= 3 and shown[-2:] == ["up", "down"]
    before = len(shown)
    quiet = invoke("ask", CLIP, "What?", "Why?", *model, "--json")  # no status line with JSON
    assert quiet.exit_code == 0 and len(shown) > before and "up" not in shown[before:]


def test_chat_names_a_missing_video_before_reading_stdin():
    """Piped without questions, chat still says first that the video is not there."""
    result = runner.invoke(app, ["chat", "/no/such.mp4"], input="")
    assert result.exit_code == 2
    assert one_line(result) == "error: /no/such.mp4: no such file"
