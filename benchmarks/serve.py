"""What a warm server saves, side by side in one run (timings are measured here, never
asserted in tests).

    python benchmarks/serve.py --model random:llava-onevision-0.5b --frames 4
    python benchmarks/serve.py --model PATH --calls 5 --clients 1,4,8 --requests 4

(a) a shell loop of ``vidcom2 ask`` calls, each a cold process, against the same loop with
    ``--server``: whole-process wall time per call, the request itself (the stages the answer
    reports, plus the server's queue), and the overhead beyond it;
(b) 1, 4, 8 concurrent clients against a server with ``--max-batch 1`` and one with dynamic
    batching (``--max-batch 8``): requests per second, medians over ``--repeats``; every
    client asks its own questions about the same video (a cached prefix, so the test measures
    answering, not encoding);
(c) the second question about a video against the first (through the server).

Prints markdown tables and the machine they ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py, beside this script)

from vidcom2_cli.serve.client import Client, chat_body  # noqa: E402  (after the path)

CLIP = ROOT / "sample_videos" / "scene_cut.mp4"



def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}


def vidcom2() -> list[str]:
    return [sys.executable, "-c", "import sys; from vidcom2_cli.cli import main; "
            "sys.argv[0] = 'vidcom2'; main()"]


def start_server(args: argparse.Namespace, max_batch: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [*vidcom2(), "serve", "--model", args.model, "--port", "0", "--device", args.device,
         "--frames", str(args.frames), "--max-new-tokens", str(args.max_new_tokens),
         "--max-batch", str(max_batch), "--media-root", str(args.video.parent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment())
    for line in process.stderr:
        found = re.search(r"at (http://\S+?)/v1", line)
        if found:
            threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()
            return process, found.group(1)
    raise SystemExit(f"the server did not start (exit {process.wait()})")


def ask_process(args: argparse.Namespace, question: str, server: str | None
                ) -> tuple[float, float]:
    """(whole-process wall seconds, the request's own seconds) of one ``vidcom2 ask``."""
    where = ["--server", server] if server else ["--model", args.model, "--device",
                                                  args.device]
    start = time.perf_counter()
    done = subprocess.run([*vidcom2(), "ask", str(args.video), question, "--frames",
                           str(args.frames), "--max-new-tokens", str(args.max_new_tokens),
                           "--json", *where], capture_output=True, text=True,
                          env=environment())
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"ask failed: {done.stderr.strip()}")
    payload = json.loads(done.stdout)
    return wall, payload["timing_ms"]["total"] / 1000.0


def request(client: Client, model: str, video: str, question: str,
            settings: dict | None = None) -> dict:
    return client.chat(chat_body(model, video, question, settings or {}, {})).fields


def loop_section(args: argparse.Namespace, server: str) -> list[str]:
    rows = []
    for label, where in (("cold `vidcom2 ask` per call", None), ("`vidcom2 ask --server`",
                                                                 server)):
        measured = [ask_process(args, f"Question {index}: what happens?", where)
                    for index in range(args.calls)]
        walls = [wall for wall, _ in measured]
        own = [seconds for _, seconds in measured]
        overhead = [wall - seconds for wall, seconds in measured]
        rows.append(f"| {label} | {statistics.median(walls):.2f} | "
                    f"{statistics.median(own):.2f} | {statistics.median(overhead):.2f} |")
    return ["| loop of `ask` calls | wall s / call | request s | overhead s / call |",
            "|---|---:|---:|---:|", *rows]


def throughput(client: Client, model: str, video: str, clients: int, requests: int) -> float:
    def work(index: int) -> None:
        for turn in range(requests):
            request(client, model, video, f"Client {index}, question {turn}: what moves?")

    threads = [threading.Thread(target=work, args=(index,)) for index in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return clients * requests / (time.perf_counter() - start)


def concurrency_section(args: argparse.Namespace, servers: dict[int, str]) -> list[str]:
    video = args.video.name
    clients = {batch: Client(url) for batch, url in servers.items()}
    models = {batch: client.served_model() for batch, client in clients.items()}
    for batch, client in clients.items():  # the video's prefix in each server's cache
        request(client, models[batch], video, "Warm up.")
    rates: dict[tuple[int, int], list[float]] = {}
    for _ in range(args.repeats):
        for count in args.clients:
            for batch, client in clients.items():
                rates.setdefault((count, batch), []).append(
                    throughput(client, models[batch], video, count, args.requests))
    lines = ["| clients | req/s, `--max-batch 1` | req/s, dynamic (`--max-batch 8`) | "
             "ratio |", "|---:|---:|---:|---:|"]
    for count in args.clients:
        one, many = (statistics.median(rates[(count, batch)]) for batch in (1, 8))
        lines.append(f"| {count} | {one:.2f} | {many:.2f} | {many / one:.2f}x |")
    return lines


def reuse_section(args: argparse.Namespace, server: str) -> list[str]:
    client = Client(server)
    model = client.served_model()
    firsts, seconds = [], []
    for index in range(args.repeats):
        settings = {"ratio": round(0.2 + 0.01 * index, 2)}  # a prefix not cached yet
        for times, question in ((firsts, "What happens?"), (seconds, "And then?")):
            start = time.perf_counter()
            request(client, model, args.video.name, question, settings)
            times.append(time.perf_counter() - start)
    first, second = statistics.median(firsts), statistics.median(seconds)
    return ["| question about a video | s (median) |", "|---|---:|",
            f"| first (decode, encode, compress, prefill the prefix) | {first:.3f} |",
            f"| second (its prefix from the cache) | {second:.3f} |",
            f"| first / second | {first / second:.1f}x |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--video", type=Path, default=CLIP)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--calls", type=int, default=3, help="(a): ask calls per loop")
    parser.add_argument("--clients", type=lambda text: [int(x) for x in text.split(",")],
                        default=[1, 4, 8], help="(b): concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=3, help="(b): requests per client")
    parser.add_argument("--repeats", type=int, default=3, help="(b), (c): medians over these")
    args = parser.parse_args()
    args.video = args.video.resolve()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; python "
          f"{platform.python_version()}; model {args.model}, {args.frames} frames, "
          f"{args.max_new_tokens} new tokens, device {args.device}\n")
    single, single_url = start_server(args, 1)
    dynamic, dynamic_url = start_server(args, 8)
    try:
        print("\n".join(loop_section(args, dynamic_url)), end="\n\n")
        print("\n".join(concurrency_section(args, {1: single_url, 8: dynamic_url})),
              end="\n\n")
        print("\n".join(reuse_section(args, dynamic_url)))
    finally:
        for process in (single, dynamic):
            process.terminate()
            process.wait(120)


if __name__ == "__main__":
    main()
