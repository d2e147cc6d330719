"""The command line of `python3 -m app.eval` (see app/eval/__init__.py for its usage)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import app.eval as package
from app.client import DEFAULT_URL, EXIT_FAILED, EXIT_OK, GatewayClient, run_command
from app.eval import reports, runs, scores


def cmd_score(args: argparse.Namespace) -> int:
    score = scores.score_folder(args.predictions, args.references, args.transcripts)
    print(reports.text_table(reports.file_rows(score)))
    if args.json:
        write_json(args.json, score)
    if not score["count"]:
        print("error: no prediction had a reference: nothing scored", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    data: Path = args.data_dir
    transcripts = sorted((data / "transcripts").glob("*.txt"))[:args.limit]
    out = args.out or Path(tempfile.mkdtemp(prefix="llm-gateway-eval-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(transcripts)} transcripts to {args.service}/{args.flavor} at {args.url}; summaries in {out}",
          file=sys.stderr)
    client = GatewayClient(args.url, args.api_key)
    jobs = runs.submit_all(client, transcripts, args.service, args.flavor)
    runs.follow_all(client, jobs, out, timeout=args.timeout)

    done = [row["name"] for row in jobs if row.get("state") == "complete"]
    score = scores.score_folder(out, data / "references", data / "transcripts", names=done)
    by_name = {row["name"]: row for row in score["files"]}
    files = [{"name": job["name"], "state": job["state"], **by_name.get(job["name"], {}), **job} for job in jobs]
    label = f"{args.service}/{args.flavor}"
    result: dict[str, Any] = {"service": args.service, "flavor": args.flavor, "url": args.url, "out": str(out),
                              "jobs": len(jobs), "complete": len(done),
                              **scores.summarise(files, (*scores.MEAN_KEYS, *runs.RUN_KEYS)), "files": files}
    if runs.checks_total(files):          # the answer checks of every job, added up (the last row)
        result["checks"] = runs.checks_total(files)
    # The published systems, on the files this run summarised: a --limit run is compared on its own files.
    systems = {label: {key: result[key] for key in ("count", *scores.MEAN_KEYS) if key in result}}
    for folder in sorted(path for path in (data / "predictions").glob("*") if path.is_dir() and done):
        system = scores.score_folder(folder, data / "references", data / "transcripts", names=done)
        systems[folder.name] = {key: value for key, value in system.items() if key not in ("files", "skipped")}
    result["systems"] = {name: figures for name, figures in systems.items() if name != label}
    system_rows = [{"name": name, **figures} for name, figures in systems.items()] if len(systems) > 1 else []

    print(reports.text_table(reports.file_rows(result)))
    if system_rows:
        print()
        print(reports.text_table(system_rows, first="system"))
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        write_markdown(args.markdown, result, system_rows, systems, data)
    failed = [row for row in jobs if row["state"] != "complete"]
    for row in failed:
        print(f"{row['name']}: {row['state']}: {row.get('error')}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def write_markdown(path: Path, result: dict[str, Any], system_rows: list[dict[str, Any]],
                   systems: dict[str, dict[str, Any]], data: Path) -> None:
    """The run's report in Markdown, and its chart beside it (`REPORT.png`) when matplotlib is there."""
    chart = None
    if system_rows:
        png = path.with_suffix(".png")
        drawn, note = reports.write_chart(png, systems, f"{data.name}: the {result['count']} files this run summarised")
        print(note, file=sys.stderr)
        chart = png.name if drawn else None
    sets = ", ".join(scores.reference_sets(data / "references"))
    intro = (f"{result['jobs']} transcripts of `{data.name}` sent to {result['service']}/{result['flavor']} on "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {result['complete']} complete. ROUGE is F1 × 100 "
             f"(rouge-score, a Unicode word tokenizer, no stemming) against the best of the references ({sets}) "
             f"for each file and metric; the shares are × 100; seconds run from submission to the end of the job. "
             f"The published systems are scored the same way, on the same files.")
    title = f"Summary quality: {result['service']}/{result['flavor']} on {data.name}"
    path.write_text(reports.markdown_report(title, intro, reports.file_rows(result), system_rows, chart),
                    encoding="utf-8")
    print(f"report written to {path}", file=sys.stderr)


def write_json(path: Path, body: dict[str, Any]) -> None:
    """`body` as indented UTF-8 JSON, figures to 4 decimals."""
    path.write_text(json.dumps(_rounded(body), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"JSON written to {path}", file=sys.stderr)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


# --- command line -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """`score` and `run`, each with its options."""
    parser = argparse.ArgumentParser(prog="python3 -m app.eval", description=package.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score = commands.add_parser("score", help="Score a folder of summaries against reference summaries.")
    score.add_argument("--predictions", type=Path, required=True, metavar="DIR", help="NAME.txt summaries.")
    score.add_argument("--references", type=Path, required=True, metavar="DIR",
                       help="<k>/NAME.txt reference summaries, one sub-folder per reference set.")
    score.add_argument("--transcripts", type=Path, metavar="DIR",
                       help="NAME.txt transcripts: adds figure and name support, compression, novel trigrams.")
    score.add_argument("--json", type=Path, metavar="FILE", help="Write the scores as JSON.")
    score.set_defaults(run=cmd_score)

    run = commands.add_parser("run", help="Summarise DATA_DIR/transcripts on a gateway, then score the summaries.")
    run.add_argument("data_dir", type=Path, metavar="DATA_DIR",
                     help="Holds transcripts/, references/<k>/ and, optionally, predictions/<system>/.")
    run.add_argument("--url", default=os.environ.get("LLM_GATEWAY_URL", DEFAULT_URL),
                     help=f"The gateway's base URL [LLM_GATEWAY_URL]. Default: {DEFAULT_URL}.")
    run.add_argument("--api-key", default=os.environ.get("LLM_GATEWAY_API_KEY"),
                     help="Gateway key, sent as 'Authorization: Bearer' [LLM_GATEWAY_API_KEY].")
    run.add_argument("--service", required=True, help="The service, e.g. summary.")
    run.add_argument("--flavor", required=True, help="The flavor, e.g. mixtral.")
    run.add_argument("--out", type=Path, metavar="DIR", help="Where the summaries go. Default: a new temporary folder.")
    run.add_argument("--limit", type=int, metavar="N", help="Only the first N transcripts (by name).")
    run.add_argument("--timeout", type=float, metavar="S", help="Give up on the jobs still running after S seconds.")
    run.add_argument("--json", type=Path, metavar="FILE", help="Write the scores and the jobs' figures as JSON.")
    run.add_argument("--markdown", type=Path, metavar="FILE",
                     help="Write the tables in Markdown, and a ROUGE bar chart beside it (FILE with .png).")
    run.set_defaults(run=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code (0 done, 1 failed jobs or nothing scored, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)       # exits 2 on bad usage
    needed = ([args.predictions, args.references, args.transcripts] if args.command == "score"
              else [args.data_dir / "transcripts", args.data_dir / "references"])
    missing = [str(folder) for folder in needed if folder is not None and not folder.is_dir()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")
    if args.command == "run" and not any((args.data_dir / "transcripts").glob("*.txt")):
        parser.error(f"no NAME.txt in {args.data_dir / 'transcripts'}")
    if args.command == "run" and args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return run_command(lambda: args.run(args), "stopped; the jobs go on (see: python3 -m app.client list)")

