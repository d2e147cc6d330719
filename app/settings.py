"""Every setting of the gateway: its flag, environment variable, default and help, in one object.

A flag beats its environment variable, which beats the default. The names and defaults of
the seed version are kept (`--api_base` / `OPENAI_API_BASE`, `--workers` / `CONCURRENCY`, ...).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


def _setting(flag: str, env: str | None, default: Any, help: str, kind: type = str) -> Any:
    """Declare one setting: a dataclass field carrying its flag, env var and help."""
    return field(default=default, metadata={"flag": flag, "env": env, "help": help, "kind": kind})


@dataclass(frozen=True)
class Settings:
    """The gateway's configuration, read once at start-up; tests build it directly."""

    service_name: str = _setting("--service_name", "SERVICE_NAME", "LLM_Gateway", "Name of this gateway (logs, OpenAPI title).")
    api_base: str = _setting("--api_base", "OPENAI_API_BASE", "http://localhost:9000/v1", "Base URL of the OpenAI-compatible engine.")
    api_key: str = _setting("--api_key", "OPENAI_API_TOKEN", "EMPTY", "API key sent to the engine (never logged).")
    host: str = _setting("--host", "HOST", "0.0.0.0", "Address the HTTP API binds to.")
    service_port: int = _setting("--service_port", "HTTP_PORT", 8000, "Port the HTTP API listens on.", int)
    workers: int = _setting("--workers", "CONCURRENCY", 2, "Number of Gunicorn worker processes.", int)
    timeout: int = _setting("--timeout", "TIMEOUT", 60, "Request timeout in seconds (a Gunicorn worker silent for longer is restarted).", int)
    swagger_url: str = _setting("--swagger_url", "SWAGGER_URL", "/docs", "Path of the Swagger UI.")
    swagger_prefix: str = _setting("--swagger_prefix", "SWAGGER_PREFIX", "", "Prefix put before every route (e.g. behind a reverse proxy).")
    swagger_path: str = _setting("--swagger_path", "SWAGGER_PATH", "document/swagger_llm_gateway.yml", "Base OpenAPI document (info, tags, shared schemas).")
    debug: bool = _setting("--debug", "DEBUG", False, "Log at debug level.", bool)
    db_path: str = _setting("--db_path", "RESULT_DB_PATH", "./results.sqlite", "Path of the SQLite job database.")
    services_dir: str = _setting("--services_dir", "SERVICES_DIR", "./services", "Folder of service manifests and prompt templates (watched).")
    max_concurrent_jobs: int = _setting("--max_concurrent_jobs", "MAX_CONCURRENT_JOBS", 4, "Jobs the runner processes at once.", int)
    engine_concurrency: int = _setting("--engine_concurrency", "ENGINE_CONCURRENCY", 8, "Requests in flight to one engine at once.", int)
    engine_timeout: int = _setting("--engine_timeout", "ENGINE_TIMEOUT", 600, "Seconds before one engine call is abandoned (and retried).", int)
    engine_retries: int = _setting("--engine_retries", "ENGINE_RETRIES", 8, "Retries of one engine call on transient errors.", int)
    engine_job_retries: int = _setting("--engine_job_retries", "ENGINE_JOB_RETRIES", 100, "Retries one job may spend in all (every call together) before it fails or falls back.", int)
    engine_retry_delay: float = _setting("--engine_retry_delay", "ENGINE_RETRY_DELAY", 1.0, "First backoff wait in seconds; it doubles on each retry, capped at 30 s.", float)
    max_upload_mb: int = _setting("--max_upload_mb", "MAX_UPLOAD_MB", 20, "Largest accepted transcript upload, in MB.", int)
    api_keys: str = _setting("--api_keys", "API_KEYS", "", "Comma-separated gateway keys; when set (or a keys file is), requests need 'Authorization: Bearer <key>'.")
    api_keys_file: str = _setting("--api_keys_file", "API_KEYS_FILE", "", "File of gateway keys, one per line ('#' comments).")
    protect_docs: bool = _setting("--protect_docs", "PROTECT_DOCS", False, "When keys are set, require one for /docs and /openapi.json too.", bool)
    cors_origins: str = _setting("--cors_origins", "CORS_ORIGINS", "", "Comma-separated origins allowed by CORS (empty: CORS off).")
    result_ttl_days: float = _setting("--result_ttl_days", "RESULT_TTL_DAYS", 30, "Finished jobs older than this are deleted (0 keeps them forever).", float)
    reload_debounce: float = _setting("--reload_debounce", "RELOAD_DEBOUNCE", 0.3, "Seconds of quiet before the services folder is reloaded.", float)
    max_streams: int = _setting("--max_streams", "MAX_STREAMS", 64, "Event streams and websockets one Gunicorn worker serves at once (over it: 503, poll instead).", int)
    log_format: str = _setting("--log_format", "LOG_FORMAT", "text", "Log line format: text or json (one JSON object per line).")
    result_db_url: str = _setting("--result_db_url", "RESULT_DB_URL", "", "Job store URL, e.g. postgresql://user:pass@host/db, shared by every node (empty: SQLite at --db_path).")
    broker_url: str = _setting("--broker_url", "BROKER_URL", "", "Celery broker, e.g. redis://host:6379/0: jobs go to `python3 -m app worker` processes instead of the local runner.")
    visibility_timeout: int = _setting("--visibility_timeout", "VISIBILITY_TIMEOUT", 300, "Seconds before the broker hands a job nobody acknowledged (its worker died) to another worker.", int)
    job_lease: int = _setting("--job_lease", "JOB_LEASE", 60, "Seconds without a sign of life from its worker after which a processing job may be taken over.", int)
    checkpoint_interval: float = _setting("--checkpoint_interval", "CHECKPOINT_INTERVAL", 0.25, "Fewest seconds between two checkpoint writes of a job (0: after every batch). A job that stops writes its newest one at once; a kill -9 re-sends the batches finished in at most this many seconds.", float)

    def __post_init__(self) -> None:
        for name, low in (("service_port", 0), ("workers", 1), ("timeout", 1), ("max_concurrent_jobs", 1),
                          ("engine_concurrency", 1), ("engine_timeout", 1), ("engine_retries", 0), ("engine_job_retries", 0), ("max_upload_mb", 1),
                          ("max_streams", 1), ("visibility_timeout", 2), ("job_lease", 1),
                          ("checkpoint_interval", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
        if self.job_lease >= self.visibility_timeout:
            # A job seen running elsewhere is looked at again after one lease, by a delayed
            # message; the broker must not deliver that message twice meanwhile.
            raise ValueError("job_lease must be shorter than visibility_timeout")

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """The settings safe to show (the engine key is masked)."""
        values = dataclasses.asdict(self)
        values["api_key"] = "***"
        values["api_keys"] = "***" if self.api_keys else ""
        from app.jobs.schema import redacted
        for name in ("result_db_url", "broker_url"):
            values[name] = redacted(values[name]) if values[name] else ""
        return values


def setting_fields() -> list[dataclasses.Field]:
    """The declared settings, in order."""
    return list(dataclasses.fields(Settings))


def _convert(raw: str, kind: type, name: str) -> Any:
    if kind is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name}: expected {kind.__name__}, got {raw!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser: one flag per setting, plus the role to run."""
    parser = argparse.ArgumentParser(
        prog="python3 -m app",
        description="LLM Gateway: queue transcripts, summarize them through an OpenAI-compatible engine.",
        epilog="Each flag can also be set by the environment variable named in brackets; a flag beats its variable.",
    )
    parser.add_argument("role", nargs="?", default="all", choices=("all", "web", "runner", "worker"),
                        help="all (default): web server and job runner, supervised (web only when BROKER_URL is set);"
                             " web or runner: one of them alone; worker: a Celery worker running jobs from BROKER_URL.")
    for f in setting_fields():
        meta = f.metadata
        env = f" [{meta['env']}]" if meta["env"] else ""
        if meta["kind"] is bool:
            parser.add_argument(meta["flag"], dest=f.name, action="store_const", const=True, default=None,
                                help=f"{meta['help']}{env}")
        else:
            parser.add_argument(meta["flag"], dest=f.name, default=None, metavar=f.name.upper(),
                                help=f"{meta['help']} Default: {f.default!r}.{env}")
    return parser


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> tuple[str, Settings]:
    """Read the role and the settings from flags, then environment variables, then defaults."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for f in setting_fields():
        meta = f.metadata
        given = getattr(args, f.name)
        if given is not None:
            values[f.name] = given if meta["kind"] is bool else _convert(given, meta["kind"], meta["flag"])
        elif meta["env"] and meta["env"] in environ:
            values[f.name] = _convert(environ[meta["env"]], meta["kind"], meta["env"])
    return args.role, Settings(**values)
