"""``ask --server`` and ``batch --server``: the same output as the local commands, from a
running ``vidcom2 serve`` (no torch or transformers imported for ``ask``).

Only the options given on the command line (or by their environment variables) are sent;
the others are the server's own defaults, so ``serve --ratio 0.1`` holds for every client
that does not ask for another ratio.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from . import console
from .checks import OptionError, parse_method_options

if TYPE_CHECKING:
    from ..serve.client import Client, Reply, ServerError

# Options that only mean something where the model runs.
SERVER_SIDE = ("device", "dtype", "attn", "device_map", "feature_cache")
# Request fields named in server errors, as the options that set them.
_OPTION_OF = {"vidcom2.ratio": "--ratio", "vidcom2.method_options": "--method-option",
              "vidcom2.method": "--method", "vidcom2.frames/fps/max_frames":
              "--frames/--fps/--max-frames", "vidcom2.min_pixels/max_pixels":
              "--min-pixels/--max-pixels", "vidcom2.min_pixels": "--min-pixels",
              "vidcom2.max_pixels": "--max-pixels", "vidcom2.frames": "--frames",
              "vidcom2.fps": "--fps", "vidcom2.max_frames": "--max-frames",
              "max_tokens": "--max-new-tokens", "model": "--model", "temperature":
              "--temperature", "top_p": "--top-p", "seed": "--seed"}
QUEUE_RETRIES = 30  # a full queue (503) is retried after its Retry-After, this many times


def given(context: typer.Context, name: str) -> bool:
    """Whether an option was set on the command line or by its environment variable."""
    source = context.get_parameter_source(name)  # typer's own click's enum: by name
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def refuse_server_side(context: typer.Context, local_only: tuple[str, ...] = ()) -> None:
    """Options that cannot apply to a server's run are refused rather than ignored."""
    for name in SERVER_SIDE:
        if given(context, name):
            flag = "--" + name.replace("_", "-")
            raise OptionError(f"{flag}: set where the model runs (vidcom2 serve {flag} ...), "
                              "not with --server")
    for name in local_only:
        if given(context, name):
            flag = "--ray" if name == "ray_address" else "--" + name.replace("_", "-")
            raise OptionError(f"{flag}: only without --server (the server batches and reuses "
                              "prefixes itself)")


def request_settings(context: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The ``vidcom2`` field: the compression and sampling options that were given."""
    settings = {name: values[name] for name in ("ratio", "method", "frames", "fps",
                                                 "max_frames", "min_pixels", "max_pixels")
                if given(context, name)}
    if given(context, "method_option"):
        settings["method_options"] = dict(parse_method_options(values["method_option"]))
    return settings


def generation_fields(context: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """max_tokens, temperature (0: greedy), top_p and seed, where given."""
    fields: dict[str, Any] = {}
    if given(context, "max_new_tokens"):
        fields["max_tokens"] = values["max_new_tokens"]
    if values.get("sample"):
        fields["temperature"] = values.get("temperature") or 1.0
        if values.get("top_p") is not None:
            fields["top_p"] = values["top_p"]
    elif given(context, "sample"):
        fields["temperature"] = 0
    if given(context, "seed"):
        fields["seed"] = values["seed"]
    return fields


def connect(server: str, context: typer.Context, model: str) -> tuple[Client, str]:
    """The client, and the model name to send: --model when given, else the server's."""
    import os

    from ..serve.client import KEY_VARIABLE, Client

    client = Client(server, os.environ.get(KEY_VARIABLE) or None)
    return client, model if given(context, "model") else client.served_model()


@contextmanager
def server_errors(video: str | None = None) -> Iterator[None]:
    """A server's refusal as the local command's one line: 4xx exit 2, else exit 1."""
    from ..serve.client import ServerError

    try:
        yield
    except ServerError as error:
        console.print_error(error_line(error, video))
        raise typer.Exit(2 if 400 <= error.status < 500 else 1) from None


def error_line(error: ServerError, video: str | None = None) -> str:
    message = error.message
    param = error.param or ""
    if video is not None and param.startswith("messages") and param.endswith("video_url.url"):
        problem = message.removeprefix(param).lstrip(": ")
        for shown in (str(Path(video).resolve()), video):  # the server names the file too
            problem = problem.removeprefix(shown + ": ")
        return f"{video}: {problem}"
    for field, option in sorted(_OPTION_OF.items(), key=lambda item: -len(item[0])):
        if message.startswith(field + ":"):
            return option + message[len(field):]
    return message


# --- ask -----------------------------------------------------------------------------------

class ServerRun:
    """What ``print_answers`` asks of an engine, from the server's answer."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info

    def run_info(self) -> dict[str, Any]:
        return self.info


def ask_on_server(server: str, context: typer.Context, video: Path, questions: list[str],
                  values: dict[str, Any], json_output: bool, quiet: bool,
                  heatmap: Path | None) -> None:
    """``vidcom2 ask`` against a server: each question in turn (the server keeps the
    video's compressed prefix for the next), printed as the local command prints it."""
    from ..containers import read_head
    from ..serve import client as remote
    from ..serve.wire import answer_view, ask_json
    from .answers import AnswerStreamer, print_answers

    refuse_server_side(context)
    read_head(video)  # a missing file or a folder: the local command's line, no request
    settings = request_settings(context, values)
    generation = generation_fields(context, values)
    human = not (quiet or json_output)
    streaming = human and len(questions) == 1 and console.stdout.is_terminal
    with server_errors(str(video)):
        client, model = connect(server, context, values["model"])
        with _waiting(human and len(questions) == 1, client.url) as stop_status:
            on_text = AnswerStreamer(stop_status) if streaming else None
            first = remote.ask(client, model, video, questions[0], settings, generation,
                               on_text)
        if first.fields.get("random_weights"):  # as a local load says it, on stderr
            from ..report import RANDOM_WEIGHTS_NOTE

            console.stderr.print(RANDOM_WEIGHTS_NOTE, style="bold yellow")
        if streaming:
            if not on_text.started:  # the first token ended the answer
                on_text("(empty answer)")
            sys.stdout.write("\n")

        def replies() -> Iterator[Reply]:
            yield first
            for question in questions[1:]:
                yield remote.ask(client, model, video, question, settings, generation)

        if quiet and heatmap is None:  # only the answers: as print_answers prints them
            for reply in replies():
                console.print_plain(reply.text)
            return
        shown = answer_view(first.fields, str(video))
        if not json_output:
            print_answers(ServerRun(first.fields["run"]),
                          (answer_view(reply.fields, str(video)) for reply in replies()),
                          False, quiet, heatmap, shown.sampling, several=len(questions) > 1,
                          streamed=streaming)
            return
        if heatmap is not None:
            from ..heatmap import save_contact_sheet
            from .answers import frames_of

            save_contact_sheet(heatmap, frames_of(shown, shown.sampling), shown.plan,
                               frames_per_unit=shown.frames_per_unit)
        for reply in replies():
            payload = ask_json(reply.fields, str(video))
            payload["heatmap"] = str(heatmap) if heatmap is not None else None
            console.print_json(payload)


@contextmanager
def _waiting(show: bool, url: str) -> Iterator[Callable[[], None]]:
    """A status line while the server works, on a terminal only; yields what stops it."""
    if not (show and console.stderr.is_terminal):
        yield lambda: None
        return
    with console.stderr.status(f"asking {url} ...") as status:
        yield status.stop


# --- batch ---------------------------------------------------------------------------------

def batch_on_server(server: str, context: typer.Context, input_path: str, out: str,
                    resume: bool, concurrency: int, values: dict[str, Any]) -> None:
    """``vidcom2 batch`` against a server: up to ``concurrency`` items in flight (the server
    batches them and reuses each video's prefix), records written as they finish, with the
    local command's resume rules."""
    from ..batch.input import read_input
    from ..batch.output import ResultWriter, error_record, pending_items, prepare_output
    from ..batch.progress import BatchSummary, progress_bar
    from ..multiple_choice import is_correct
    from ..serve import client as remote
    from ..serve.wire import ask_json
    from .checks import output_records, whole_output_line
    from .runtime import run_line

    refuse_server_side(context, ("batch_size", "prefetch", "reuse", "ray_address", "workers",
                                 "gpus_per_worker", "chunk", "ordered"))
    if concurrency < 1:
        raise OptionError(f"--concurrency: must be at least 1, got {concurrency}")
    items = read_input(input_path)
    done = prepare_output(out, resume, input_path)
    todo = pending_items(items, done)
    settings = request_settings(context, values)
    generation = generation_fields(context, values)
    summary = BatchSummary(total=len(items), skipped=len(items) - len(todo))
    run: dict[str, Any] = {}
    with server_errors():
        client, model = connect(server, context, values["model"])

        def answer(item: Any) -> dict[str, Any]:
            if not Path(item.video).exists():  # the local command's error, without a request
                return error_record(item, f"{item.video}: no such file")
            reply = _with_retries(lambda: remote.ask(client, model, Path(item.video),
                                                     item.prompt or "", settings,
                                                     generation), item.video)
            if isinstance(reply, str):
                return error_record(item, reply)
            run.update(reply.fields.get("run") or {})
            record = ask_json(reply.fields, item.video)
            record["id"] = item.id
            if item.expected is not None:
                record["expected"] = item.expected
                record["correct"] = is_correct(reply.text, str(item.expected), item.options)
            return record

        stderr = console.stderr
        with ResultWriter.open(out) as writer, progress_bar(stderr, len(todo)) as on_record, \
                ThreadPoolExecutor(concurrency, thread_name_prefix="vidcom2-client") as pool:
            running: set[Future[dict[str, Any]]] = set()
            queue = iter(todo)

            def write(record: dict[str, Any]) -> None:
                writer.write(record)
                summary.add(record)
                on_record(summary)

            for item in queue:
                if item.error is not None:
                    write(error_record(item, item.error))
                    continue
                running.add(pool.submit(answer, item))
                if len(running) >= concurrency:
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        write(future.result())
            for future in _as_finished(running):
                write(future.result())
    stderr.print(summary.render(), highlight=False, markup=False)
    if run:
        stderr.print(run_line(run) + " (server)", highlight=False, markup=False,
                     soft_wrap=True)
    if resume and done and out != "-":
        whole = BatchSummary(total=len(items))
        for record in output_records(out):
            whole.add(record)
        stderr.print(f"whole output {out}: " + whole_output_line(whole), highlight=False,
                     markup=False, soft_wrap=True)
    console.fail_if_all_failed(summary)


def _as_finished(futures: set[Future[Any]]) -> Iterator[Future[Any]]:
    while futures:
        finished, futures = wait(futures, return_when=FIRST_COMPLETED)
        yield from finished


def _with_retries(call: Callable[[], Reply], video: str) -> Reply | str:
    """The reply, or the item's error line: a full queue is waited out (its Retry-After), a
    refusal (4xx) or a failure (5xx) is the item's error; a server that is gone ends the
    run."""
    from ..serve.client import ServerError, ServerUnreachable

    for attempt in range(QUEUE_RETRIES + 1):
        try:
            return call()
        except ServerUnreachable:
            raise
        except ServerError as error:
            if error.status == 503 and attempt < QUEUE_RETRIES:
                time.sleep(error.retry_after or 1.0)
                continue
            return error_line(error, video)
    raise AssertionError("unreachable")  # pragma: no cover

