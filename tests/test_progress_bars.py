"""Download and loading progress bars: on where stderr is a terminal, off when piped or when a
command prints --json or --quiet, and never with library log lines. Each case runs in its own
process (the libraries keep the switch in globals) with stderr on a pseudo-terminal or a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap

import pytest

BAR = """
from huggingface_hub.utils import are_progress_bars_disabled, tqdm
for _ in tqdm(range(3), desc="model.safetensors"):
    pass
print("bars off" if are_progress_bars_disabled() else "bars on", flush=True)
"""


def run(code: str, terminal: bool) -> tuple[str, str]:
    """(stdout, stderr) of ``code`` in a fresh interpreter, stderr a terminal or a pipe."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")}
    if not terminal:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=120, check=True)
        return done.stdout, done.stderr
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80x24
    try:
        done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=secondary, text=True, env=env, timeout=120, check=True)
    finally:
        os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closed: everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    return done.stdout, b"".join(chunks).decode(errors="replace")


def program(call: str, import_first: bool = False) -> str:
    first = "import huggingface_hub.utils, transformers.utils.logging\n" if import_first else ""
    return first + f"from vidcom2_cli.cli.checks import library_logs\n{call}\n" + BAR


@pytest.mark.parametrize("import_first", [False, True])
def test_bars_show_on_a_terminal(import_first):
    out, err = run(program("library_logs(show=False)", import_first), terminal=True)
    assert out.strip() == "bars on"
    assert "model.safetensors: 100%" in err
    assert "WARNING" not in err and "warn" not in err.lower()


@pytest.mark.parametrize("import_first", [False, True])
def test_bars_stay_off_when_piped(import_first):
    out, err = run(program("library_logs(show=False)", import_first), terminal=False)
    assert out.strip() == "bars off"
    assert err == ""


@pytest.mark.parametrize("import_first", [False, True])
def test_json_and_quiet_turn_bars_off_on_a_terminal(import_first):
    out, err = run(program("library_logs(show=False, progress=False)", import_first),
                   terminal=True)
    assert out.strip() == "bars off"
    assert "model.safetensors" not in err


def test_transformers_loading_bar_follows_the_same_switch():
    code = textwrap.dedent("""
        from vidcom2_cli.cli.checks import library_logs
        library_logs(show=False, progress={progress})
        from transformers.utils import logging
        print(logging.is_progress_bar_enabled())
    """)
    assert run(code.format(progress=True), terminal=True)[0].strip() == "True"
    assert run(code.format(progress=False), terminal=True)[0].strip() == "False"


@pytest.mark.parametrize(("machine_output", "expected"), [(False, "bars on"), (True, "bars off")])
def test_commands_printing_for_scripts_turn_bars_off(machine_output, expected):
    """What ask/chat/bench/eval pass for --json or --quiet reaches the libraries' switch."""
    code = (f"from vidcom2_cli.cli.console import cli_errors\n"
            f"with cli_errors(debug=False, machine_output={machine_output}):\n"
            + textwrap.indent(BAR, "    "))
    out, _ = run(code, terminal=True)
    assert out.strip() == expected
