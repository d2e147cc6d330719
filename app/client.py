"""`python3 -m app.client`: submit transcripts to a gateway, follow their progress, fetch the summaries.

Exit codes: 0 done (the job is complete, the request worked), 1 failed (the job failed or was
cancelled, or an HTTP or connection error), 2 usage (bad arguments, unreadable file).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator

import requests

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_URL = "http://localhost:8000"
FINAL = ("complete", "error")       # the seed's final words: failed and cancelled jobs are "error"
POLL_S = 1.0
# A stream silent for longer than this is dead: the gateway sends a heartbeat every 10 s.
STREAM_READ_TIMEOUT_S = 35.0
# While polling, the gateway may be restarting: keep trying this long before giving up.
UNREACHABLE_GRACE_S = 60.0


class GatewayError(Exception):
    """The gateway answered an error (in its one error shape) or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class GatewayClient:
    """The gateway's HTTP API, one method per route."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        # The HTTP status of the last answer: GET /results says 202 (running) or 200 (ended)
        # in it, which the tests' and e2e's waits check beside the body.
        self.last_status: int | None = None
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def call(self, method: str, path: str, **kwargs) -> dict[str, Any]:
        """One request; its JSON body, or GatewayError with the gateway's message."""
        try:
            response = self.session.request(method, self.url + path, timeout=kwargs.pop("timeout", self.timeout),
                                            **kwargs)
        except requests.RequestException as exc:
            raise GatewayError(f"cannot reach the gateway at {self.url}: {type(exc).__name__}") from exc
        self.last_status = response.status_code
        if response.status_code >= 400:
            raise GatewayError(_error_text(response), response.status_code)
        return response.json()

    def submit(self, service: str, path: str, flavor: str | None = None, temperature: float | None = None,
               top_p: float | None = None) -> str:
        """Upload a transcript file; return the job id."""
        form = {k: str(v) for k, v in (("flavor", flavor), ("temperature", temperature), ("top_p", top_p))
                if v is not None}
        with open(path, "rb") as handle:
            body = self.call("POST", f"/services/{service}/generate", data=form,
                             files={"file": (os.path.basename(path), handle)})
        return body["jobId"]

    def result(self, job_id: str) -> dict[str, Any]:
        """GET /results/<id>."""
        return self.call("GET", f"/results/{job_id}")

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) from GET /results/<id>/events until the stream ends."""
        try:
            with self.session.get(f"{self.url}/results/{job_id}/events", stream=True,
                                  timeout=(self.timeout, STREAM_READ_TIMEOUT_S)) as response:
                if response.status_code >= 400:
                    raise GatewayError(_error_text(response), response.status_code)
                response.encoding = "utf-8"      # SSE is always UTF-8
                for event, data in parse_sse(response.iter_lines(chunk_size=None, decode_unicode=True)):
                    yield event, json.loads(data)
        except requests.RequestException as exc:
            raise GatewayError(f"event stream broken: {type(exc).__name__}") from exc


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Server-Sent Events from text lines: (event name, data); comments (heartbeats) skipped."""
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


def wait_for(client: GatewayClient, job_id: str, on_update: Callable[[dict[str, Any]], None],
             on_partial: Callable[[list[str]], None] = lambda lines: None) -> dict[str, Any]:
    """Follow a job to its end through its event stream, or by polling if the stream fails; its result.

    `on_partial` gets the new lines of the report as batches finish (from the stream only)."""
    try:
        for event, data in client.events(job_id):
            if event in FINAL and "jobId" in data:
                on_update(data)
                return data
            if event == "progress":
                on_update(data)
            elif event == "partial":
                on_partial(data.get("lines") or [])
            elif event == "error":
                break           # the job is gone (the error shape): polling says so in the usual way
    except GatewayError:
        pass    # a gateway without the route, a proxy that buffers, a worker at its stream cap, a restart
    return poll(client, job_id, on_update)


class PollTimeout(TimeoutError):
    """poll() was given a timeout and the job had not ended by then."""


def poll(client: GatewayClient, job_id: str, on_update: Callable[[dict[str, Any]], None] = lambda data: None, *,
         interval: float | None = None, timeout: float | None = None,
         on_unreachable: Callable[[GatewayError], None] = lambda exc: None) -> dict[str, Any]:
    """Poll GET /results/<id> every `interval` seconds (POLL_S) until the job ends; its last result.

    on_update gets every answer (it may raise to stop following). A gateway that cannot be reached
    (it may be restarting) is ridden out for UNREACHABLE_GRACE_S in a row, each failure handed to
    on_unreachable; an HTTP error is raised at once. With `timeout`, PollTimeout once that many
    seconds have passed without an end (the CLI waits for as long as the job takes)."""
    interval = POLL_S if interval is None else interval      # read now: tests shorten POLL_S
    deadline = None if timeout is None else time.monotonic() + timeout
    unreachable_since = None
    while True:
        try:
            data = client.result(job_id)
        except GatewayError as exc:
            if exc.status is not None:
                raise
            on_unreachable(exc)
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > UNREACHABLE_GRACE_S:
                raise
        else:
            unreachable_since = None
            on_update(data)
            if data["status"] in FINAL:
                return data
        if deadline is not None and time.monotonic() >= deadline:
            raise PollTimeout(f"job {job_id} not finished after {timeout:g} s")
        time.sleep(interval)


# --- commands ---------------------------------------------------------------------------------

def cmd_submit(client: GatewayClient, args: argparse.Namespace) -> int:
    job_id = client.submit(args.service, args.file, args.flavor, args.temperature, args.top_p)
    if not (args.wait or args.output or args.follow):
        print(job_id)
        return EXIT_OK
    print(f"job {job_id}", file=sys.stderr)
    result = follow(client, job_id, quiet=args.quiet, show_partial=args.follow)
    if result["status"] != "complete":
        print(f"job {job_id} {result.get('state') or result['status']}: {result.get('error') or result.get('message')}",
              file=sys.stderr)
        return EXIT_FAILED
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(result["summarization"] + "\n")
        print(f"summary written to {args.output}", file=sys.stderr)
    else:
        print(result["summarization"])
    if result.get("usage"):
        print(f"usage: {format_usage(result['usage'])}", file=sys.stderr)
    return EXIT_OK


def follow(client: GatewayClient, job_id: str, quiet: bool = False, show_partial: bool = False) -> dict[str, Any]:
    """Follow a job with a progress bar on stderr (and, with show_partial, the report's lines as
    its batches finish); return its final result."""
    from tqdm import tqdm

    with tqdm(total=100, file=sys.stderr, disable=quiet, dynamic_ncols=True,
              bar_format="{n_fmt:>3}% |{bar}| {elapsed} {desc}") as bar:
        def on_update(data: dict[str, Any]) -> None:
            bar.set_description_str(data.get("detail") or data.get("status", ""), refresh=False)
            bar.update(max(0, data.get("progress", 0) - bar.n))
            bar.refresh()

        def on_partial(lines: list[str]) -> None:
            if show_partial:
                for line in lines:          # above the bar, on stderr: stdout keeps the final summary
                    tqdm.write(line, file=sys.stderr)

        return wait_for(client, job_id, on_update, on_partial)


def cmd_services(client: GatewayClient, args: argparse.Namespace) -> int:
    body = client.call("GET", "/services")        # the seed's array of manifests
    if args.json:
        return _print_json(body)
    for service in body:
        flavors = ", ".join(f.get("name", "?") for f in service.get("flavor", []))
        description = next(iter((service.get("description") or {}).values()), "")
        print(f"{service.get('name')}\tfields={service.get('fields')}\tflavors: {flavors}\t{description}")
    # Files that failed to load are not services: /health lists them.
    for error in client.call("GET", "/health").get("registry", {}).get("errors", []):
        print(f"invalid manifest {error.get('file')}: {error.get('message')}", file=sys.stderr)
    return EXIT_OK


def cmd_status(client: GatewayClient, args: argparse.Namespace) -> int:
    body = client.result(args.job_id)
    _print_json(body)
    return EXIT_FAILED if body["status"] == "error" else EXIT_OK


def cmd_list(client: GatewayClient, args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("status", args.status), ("service", args.service), ("limit", args.limit)) if v}
    body = client.call("GET", "/results", params=params)
    if args.json:
        return _print_json(body)
    for job in body["jobs"]:
        created = datetime.fromtimestamp(job["createdAt"]).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{job['jobId']}\t{job['status']}\t{job['progress']:>3}%\t{job['service']}/{job['flavor']}\t{created}")
    print(f"{len(body['jobs'])} of {body['total']} job(s)", file=sys.stderr)
    return EXIT_OK


def cmd_cancel(client: GatewayClient, args: argparse.Namespace) -> int:
    body = client.call("DELETE", f"/results/{args.job_id}")
    if args.json:
        return _print_json(body)
    print(f"{body['jobId']}: {body['outcome']}. {body['message']}")
    return EXIT_OK


def format_usage(usage: dict[str, Any]) -> str:
    """`3 calls, 1200 prompt + 300 completion tokens, 2.1 s in the engine, 0 retries`."""
    return (f"{usage.get('calls', 0)} calls, {usage.get('prompt_tokens', 0)} prompt + "
            f"{usage.get('completion_tokens', 0)} completion tokens, {usage.get('engine_seconds', 0)} s in the engine, "
            f"{usage.get('retries', 0)} retries")


def _print_json(body: Any) -> int:
    print(json.dumps(body, indent=2, ensure_ascii=False))
    return EXIT_OK


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
        return f"HTTP {response.status_code} {body['error']}: {body['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


# --- command line -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The parser: global options may be given before or after the command."""
    def common(parser: argparse.ArgumentParser, top: bool) -> None:
        # On sub-commands the default is SUPPRESS, so it does not overwrite a value given before the command.
        default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
        parser.add_argument("--url", default=default(os.environ.get("LLM_GATEWAY_URL", DEFAULT_URL)),
                            help=f"The gateway's base URL [LLM_GATEWAY_URL]. Default: {DEFAULT_URL}.")
        parser.add_argument("--api-key", default=default(os.environ.get("LLM_GATEWAY_API_KEY")),
                            help="Gateway key, sent as 'Authorization: Bearer' [LLM_GATEWAY_API_KEY].")
        parser.add_argument("--json", action="store_true", default=default(False), help="Print the raw JSON answer.")

    parser = argparse.ArgumentParser(prog="python3 -m app.client", description="Talk to an LLM Gateway.",
                                     epilog="Exit codes: 0 done, 1 job failed or HTTP error, 2 usage.")
    common(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="Queue a transcript; with --wait, follow it and print the summary.")
    common(submit, top=False)
    submit.add_argument("file", metavar="FILE", help="The transcript (text, .srt, .vtt or JSON segments).")
    submit.add_argument("--service", required=True, help="The service, e.g. cra.")
    submit.add_argument("--flavor", help="The flavor (optional when the service has one).")
    submit.add_argument("--temperature", type=float)
    submit.add_argument("--top-p", type=float)
    submit.add_argument("--wait", action="store_true", help="Show progress until the job ends, then print the summary.")
    submit.add_argument("-o", "--output", help="Write the summary to this file (implies --wait).")
    submit.add_argument("-q", "--quiet", action="store_true", help="No progress bar.")
    submit.add_argument("--follow", action="store_true",
                        help="Follow the job (implies --wait) and print the report's lines on stderr as its batches finish.")
    submit.set_defaults(run=cmd_submit)

    services = commands.add_parser("services", help="List the loaded services and their flavors.")
    common(services, top=False)
    services.set_defaults(run=cmd_services)
    status = commands.add_parser("status", help="Show one job (exit 1 if it failed or was cancelled).")
    common(status, top=False)
    status.add_argument("job_id", metavar="ID")
    status.set_defaults(run=cmd_status)
    listing = commands.add_parser("list", help="List jobs, newest first.")
    common(listing, top=False)
    listing.add_argument("--status", choices=("queued", "processing", "complete", "error", "failed", "cancelled"))
    listing.add_argument("--service")
    listing.add_argument("--limit", type=int)
    listing.set_defaults(run=cmd_list)
    cancel = commands.add_parser("cancel", help="Cancel a queued or running job, or delete a finished one.")
    common(cancel, top=False)
    cancel.add_argument("job_id", metavar="ID")
    cancel.set_defaults(run=cmd_cancel)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)       # exits 2 on bad usage
    if args.command == "submit" and not os.path.isfile(args.file):
        parser.error(f"cannot read {args.file!r}")
    client = GatewayClient(args.url, args.api_key)
    return run_command(lambda: args.run(client, args), "stopped following; the job goes on "
                       "(see: python3 -m app.client status ID)")


def run_command(command: Callable[[], int], interrupted: str) -> int:
    """A command-line tool's command: its exit code, a gateway error printed as `error: ...` (exit 1),
    Ctrl-C answered with `interrupted` (exit 130). app.eval's commands go through it too."""
    try:
        return command()
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
