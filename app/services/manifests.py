"""Service manifests: the Service and Flavor types, and loading + validating one manifest file.

A manifest is `services/<name>.json` (or `.yaml`/`.yml`) in the seed's format, next to the
prompt template `<name>.txt` whose `{}` placeholders are filled in order.
"""
from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass(frozen=True)
class Flavor:
    """One way to run a service: which model, with which budgets and sampling settings."""

    name: str
    model: str                       # manifest key "modelName"
    total_context_length: int        # "totalContextLength": prompt + generated tokens
    max_generation_length: int       # "maxGenerationLength": max_tokens of each call
    create_new_turn_after: int       # "createNewTurnAfter": longer turns become virtual turns
    summary_turns: int               # "summaryTurns": previous summary lines given as context
    max_new_turns: int               # "maxNewTurns": at most this many turns per batch
    temperature: float = 0.1
    top_p: float = 0.8
    tokenizer_class: str | None = None       # "tokenizerClass" (seed key, informative)
    tokenizer: str | None = None             # "tokenizer": HF repo id or local folder
    reduce_summary: bool = False             # "reduceSummary"
    reduce_prompt: str | None = None         # "reduce_prompt": template file name
    consolidate_summary: bool = False        # "consolidateSummary"
    api_base: str | None = None              # "apiBase": engine for this flavor
    api_key_env: str | None = None           # "apiKeyEnv": env var holding that engine's key
    max_concurrent_requests: int | None = None  # "maxConcurrentRequests"
    fallback_flavor: str | None = None       # "fallbackFlavor"
    # "contextSource" (fields 2): what the first {} holds. "summary": the end of the summary so far,
    # so batches run one after the other; "transcript": the turns before the batch, so they don't wait.
    context_source: str = "summary"

    def engine(self, settings) -> tuple[str, str]:
        """(api_base, api_key) this flavor's calls go to: its `apiBase` and the key in the variable
        its `apiKeyEnv` names, else the gateway's --api_base and --api_key."""
        api_key = (os.environ.get(self.api_key_env) if self.api_key_env else None) or settings.api_key
        return self.api_base or settings.api_base, api_key


@dataclass(frozen=True)
class Service:
    """A loaded, validated service: its manifest, flavors, template location and validated template."""

    name: str
    fields: int
    flavors: tuple[Flavor, ...]
    template_path: str
    manifest_path: str
    template: str = ""                                  # the template text as validated at load
    # reduce_prompt file name -> its text as validated at load (flavors with reduceSummary)
    reduce_templates: dict[str, str] = field(default_factory=dict)
    type: str = "summary"
    description: dict[str, str] = field(default_factory=dict)
    backend: str = "vLLM"
    # "output": what the answers are checked as (app/pipeline/checks.py). "turns": one
    # "Speaker : text" line per speaker turn (a compte rendu analytique); "summary": free text.
    output: str = "summary"
    raw: dict[str, Any] = field(default_factory=dict)  # the manifest as written (seed shape)

    def flavor(self, name: str | None) -> Flavor | None:
        """The flavor called `name`; with no name, the only flavor if there is exactly one."""
        if name is None or name == "":
            return self.flavors[0] if len(self.flavors) == 1 else None
        return next((f for f in self.flavors if f.name == name), None)

    def recorded_for(self, flavor: str) -> dict[str, Any]:
        """What a job records of the manifest it was accepted with: the service's name and fields and
        that flavor's entry as written, not every flavor and description (a job stores only what it uses)."""
        entries = [f for f in self.raw.get("flavor", []) if isinstance(f, dict) and f.get("name") == flavor]
        return {"name": self.name, "fields": self.fields, "flavor": entries}


class ManifestError(ValueError):
    """A manifest or template that cannot be loaded; the message names the problem."""


MANIFEST_SUFFIXES = (".json", ".yaml", ".yml")
# Used with fullmatch: `$` would also match before a final newline, letting "cra\n" through.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
# A manifest is a few KiB; the cap keeps a huge file from being read, parsed and served by every
# GET /services and stored with every job.
MAX_MANIFEST_BYTES = 256 * 1024
# The seed's top-level keys, then `route` and `format`, which LinTO Studio's manifests may carry
# (served as written, not interpreted here). Anything else is most likely a typo: refused.
MANIFEST_KEYS = ("name", "fields", "flavor", "type", "description", "backend", "route", "format", "output")
OUTPUTS = ("summary", "turns")   # the values of "output" (app/pipeline/checks.py)
# Earlier versions listed invalid files under "errors" beside the services in GET /services: a
# service of that name would be ambiguous to clients written for them.
RESERVED_NAMES = frozenset({"errors"})

# manifest key -> (Flavor attribute, accepted types, required)
FLAVOR_KEYS: dict[str, tuple[str, tuple[type, ...], bool]] = {
    "name": ("name", (str,), True),
    "modelName": ("model", (str,), True),
    "totalContextLength": ("total_context_length", (int,), True),
    "maxGenerationLength": ("max_generation_length", (int,), True),
    "createNewTurnAfter": ("create_new_turn_after", (int,), True),
    "summaryTurns": ("summary_turns", (int,), True),
    "maxNewTurns": ("max_new_turns", (int,), True),
    "temperature": ("temperature", (int, float), False),
    "top_p": ("top_p", (int, float), False),
    "tokenizerClass": ("tokenizer_class", (str,), False),
    "tokenizer": ("tokenizer", (str,), False),
    "reduceSummary": ("reduce_summary", (bool,), False),
    "reduce_prompt": ("reduce_prompt", (str,), False),
    "consolidateSummary": ("consolidate_summary", (bool,), False),
    "apiBase": ("api_base", (str,), False),
    "apiKeyEnv": ("api_key_env", (str,), False),
    "maxConcurrentRequests": ("max_concurrent_requests", (int,), False),
    "fallbackFlavor": ("fallback_flavor", (str,), False),
    "contextSource": ("context_source", (str,), False),
}
CONTEXT_SOURCES = ("summary", "transcript")


def _refuse_special_file(info: os.stat_result, what: str) -> None:
    # open() on a FIFO waits for a writer, and on a device or socket it may wait or fail oddly:
    # one such file in the folder would freeze the reload of every process. Only regular files
    # (symlinks followed) are ever opened.
    if not stat.S_ISREG(info.st_mode):
        kind = ("folder" if stat.S_ISDIR(info.st_mode) else "named pipe (FIFO)" if stat.S_ISFIFO(info.st_mode)
                else "socket" if stat.S_ISSOCK(info.st_mode)
                else "device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "special file")
        raise ManifestError(f"{what} is not a regular file but a {kind}; only regular files are read")


def read_text_file(path: str, what: str, max_bytes: int | None = None) -> str:
    """The UTF-8 text of a regular file, refusing anything else (and files over `max_bytes`) unopened."""
    _refuse_special_file(os.stat(path), what)
    # The path may be swapped for a FIFO between the stat and the open: O_NONBLOCK makes that open
    # return at once instead of waiting for a writer, and fstat then sees what was really opened.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        _refuse_special_file(info, what)
        if max_bytes is None:
            data = handle.read()
        else:
            data = handle.read(max_bytes + 1)        # never more, even if the file grows meanwhile
            if max(info.st_size, len(data)) > max_bytes:
                raise ManifestError(f"{what} is larger than the limit of {max_bytes // 1024} KiB ({max_bytes} bytes)")
    # The same newlines as reading in text mode (universal newlines) gave.
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


class _ManifestYamlLoader(yaml.SafeLoader):
    """yaml.SafeLoader without anchors and aliases."""

    # A few hundred bytes of nested aliases ("billion laughs") expand to gigabytes once the manifest
    # is served as JSON or stored with a job. A manifest has no need for them: refuse them at parse.
    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise ManifestError("YAML anchors (&) and aliases (*) are not allowed in a manifest"
                                f" (line {mark.line + 1}, column {mark.column + 1}): write each value out")
        return super().compose_node(parent, index)


def read_manifest_file(path: str) -> Any:
    """Parse a JSON or YAML manifest file into Python data."""
    try:
        text = read_text_file(path, "the manifest", MAX_MANIFEST_BYTES)
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read the manifest: {exc}") from None
    try:
        if path.endswith(".json"):
            return json.loads(text)
        return yaml.load(text, Loader=_ManifestYamlLoader)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.endswith(".json") else "YAML"
        raise ManifestError(f"invalid {kind}: {exc}".replace("\n", " ")) from None
    except RecursionError:
        raise ManifestError("the manifest is nested too deeply to be a manifest") from None


def count_fields(template: str) -> int:
    """How many `{}` placeholders a template has; stray braces are an error."""
    rest = template.replace("{}", "")
    if "{" in rest or "}" in rest:
        raise ManifestError("the template has braces other than the {} placeholders"
                            " (write the text without { or }, each {} is one field)")
    return template.count("{}")


def read_template(path: str, fields: int) -> str:
    """Read a prompt template and check it has exactly `fields` placeholders."""
    try:
        template = read_text_file(path, f"the template {os.path.basename(path)}")
    except FileNotFoundError:
        raise ManifestError(f"the template {os.path.basename(path)} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read the template {os.path.basename(path)}: {exc}") from None
    found = count_fields(template)
    if found != fields:
        raise ManifestError(f"the template {os.path.basename(path)} has {found} {{}} placeholder(s)"
                            f" but the manifest says fields = {fields}")
    return template


def _check_type(where: str, key: str, value: Any, kinds: tuple[type, ...]) -> None:
    # bool is an int in Python; a JSON `true` must not pass as a length.
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join("number" if k is float else {str: "string", int: "integer", bool: "boolean"}.get(k, k.__name__)
                            for k in kinds if not (k is int and float in kinds))
        article = "an" if names[0] in "aeiou" else "a"
        raise ManifestError(f"{where}: '{key}' must be {article} {names}, got {json.dumps(value)}")


def parse_flavor(data: Any, index: int, folder: str) -> Flavor:
    """Validate one flavor entry of a manifest and build the Flavor."""
    where = f"flavor #{index + 1}"
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: must be an object")
    if isinstance(data.get("name"), str):
        where = f"flavor '{data['name']}'"
    unknown = sorted(set(data) - set(FLAVOR_KEYS))
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, (attr, kinds, required) in FLAVOR_KEYS.items():
        if key not in data or data[key] is None:
            if required:
                raise ManifestError(f"{where}: missing required key '{key}'")
            continue
        _check_type(where, key, data[key], kinds)
        values[attr] = float(data[key]) if float in kinds else data[key]
    flavor = Flavor(**values)
    if not NAME_PATTERN.fullmatch(flavor.name):
        raise ManifestError(f"{where}: the name may only use letters, digits, '_' and '-'")
    for attr, key in (("total_context_length", "totalContextLength"), ("max_generation_length", "maxGenerationLength"),
                      ("create_new_turn_after", "createNewTurnAfter"), ("max_new_turns", "maxNewTurns")):
        if getattr(flavor, attr) <= 0:
            raise ManifestError(f"{where}: '{key}' must be positive")
    if flavor.summary_turns < 0:
        raise ManifestError(f"{where}: 'summaryTurns' must be 0 or more")
    if flavor.max_generation_length >= flavor.total_context_length:
        raise ManifestError(f"{where}: 'maxGenerationLength' ({flavor.max_generation_length}) must be smaller than"
                            f" 'totalContextLength' ({flavor.total_context_length})")
    if not 0 <= flavor.temperature <= 2:
        raise ManifestError(f"{where}: 'temperature' must be between 0 and 2")
    if not 0 < flavor.top_p <= 1:
        raise ManifestError(f"{where}: 'top_p' must be greater than 0 and at most 1")
    if flavor.max_concurrent_requests is not None and flavor.max_concurrent_requests <= 0:
        raise ManifestError(f"{where}: 'maxConcurrentRequests' must be positive")
    if flavor.context_source not in CONTEXT_SOURCES:
        raise ManifestError(f"{where}: 'contextSource' must be one of {', '.join(CONTEXT_SOURCES)}")
    if flavor.reduce_summary and not flavor.reduce_prompt:
        raise ManifestError(f"{where}: 'reduceSummary' needs 'reduce_prompt' (a template file)")
    if flavor.reduce_prompt:
        _inside(folder, flavor.reduce_prompt, where)       # read and checked by load_service
    return flavor


def _inside(folder: str, name: str, where: str) -> str:
    """The path of `name` in `folder`; refuses names that climb out of it."""
    path = os.path.realpath(os.path.join(folder, name))
    if os.path.dirname(path) != os.path.realpath(folder):
        raise ManifestError(f"{where}: '{name}' must be a file name inside the services folder")
    return path


def load_service(manifest_path: str) -> Service:
    """Load, validate and return the service described by one manifest file."""
    folder = os.path.dirname(os.path.abspath(manifest_path))
    if os.path.islink(manifest_path) and os.path.dirname(os.path.realpath(manifest_path)) != os.path.realpath(folder):
        raise ManifestError("the manifest is a symbolic link to a file outside the services folder")
    data = read_manifest_file(manifest_path)
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be an object (a mapping of keys to values)")
    unknown = sorted(str(key) for key in data if key not in MANIFEST_KEYS)   # str(): YAML keys may be numbers
    if unknown:
        raise ManifestError(f"unknown top-level key(s) {', '.join(map(repr, unknown))} in the manifest;"
                            f" the allowed keys are {', '.join(MANIFEST_KEYS)}")
    for key in ("name", "fields", "flavor"):
        if key not in data:
            raise ManifestError(f"missing required key '{key}'")
    name = data["name"]
    _check_type("manifest", "name", name, (str,))
    if not NAME_PATTERN.fullmatch(name):
        raise ManifestError(f"the service name {name!r} may only use letters, digits, '_' and '-'")
    if name in RESERVED_NAMES:
        raise ManifestError(f"the service name {name!r} is reserved (earlier versions of GET /services listed invalid files under it)")
    _check_type("manifest", "fields", data["fields"], (int,))
    if data["fields"] not in (1, 2):
        raise ManifestError("'fields' must be 1 (turns only) or 2 (previous summary, then turns)")
    for key in ("type", "backend", "output"):
        if key in data:
            _check_type("manifest", key, data[key], (str,))
    if data.get("output", "summary") not in OUTPUTS:
        raise ManifestError(f"'output' must be one of {', '.join(OUTPUTS)} ('turns': one line per speaker turn,"
                            " checked turn by turn), not {data['output']!r}")
    description = data.get("description", {})
    if isinstance(description, str):
        description = {"en": description}
    if not isinstance(description, dict) or not all(isinstance(v, str) for v in description.values()):
        raise ManifestError("'description' must be a string or an object of language → text")
    flavors_data = data["flavor"]
    if not isinstance(flavors_data, list) or not flavors_data:
        raise ManifestError("'flavor' must be a non-empty list of flavors")
    flavors = tuple(parse_flavor(item, i, folder) for i, item in enumerate(flavors_data))
    names = [f.name for f in flavors]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ManifestError(f"flavor name(s) used twice: {', '.join(duplicated)}")
    for flavor in flavors:
        if flavor.fallback_flavor is not None and flavor.fallback_flavor not in names:
            raise ManifestError(f"flavor '{flavor.name}': 'fallbackFlavor' {flavor.fallback_flavor!r} is not a flavor"
                                " of this service")
    stem = os.path.splitext(os.path.basename(manifest_path))[0]
    template_path = _inside(folder, stem + ".txt", "manifest")
    template = read_template(template_path, data["fields"])
    reduce_templates = {f.reduce_prompt: read_template(os.path.join(folder, f.reduce_prompt), 1)
                        for f in flavors if f.reduce_prompt}
    service = Service(name=name, fields=data["fields"], flavors=flavors, template_path=template_path,
                      manifest_path=os.path.abspath(manifest_path), template=template,
                      reduce_templates=reduce_templates, type=data.get("type", "summary"),
                      description=description, backend=data.get("backend", "vLLM"),
                      output=data.get("output", "summary"), raw=data)
    for flavor in flavors:
        check_prompt_room(service, flavor, template)
    return service


def current_template(service: Service, reduce_prompt: str | None = None) -> tuple[str, str | None]:
    """A service's template (or one of its reduce templates) as it is on disk now, and None; or, if
    the file is now missing or invalid, the version validated when the service was loaded and a
    note saying so. Like a broken manifest, a broken template leaves the last valid one serving."""
    if reduce_prompt is None:
        path, fields, kept = service.template_path, service.fields, service.template
    else:
        path, fields = os.path.join(os.path.dirname(service.template_path), reduce_prompt), 1
        kept = service.reduce_templates[reduce_prompt]
    try:
        return read_template(path, fields), None
    except ManifestError as exc:
        return kept, f"the template of '{service.name}' cannot be used ({exc}); the last valid version was used"


def check_prompt_room(service: Service, flavor: Flavor, template: str) -> None:
    """Reject a flavor whose template and reserved lengths leave no room for the transcript."""
    # Counted with the offline default tokenizer: the flavor's own one may live behind an
    # engine that is not up yet. The exact budget is enforced again when batches are planned.
    from app.pipeline.chunking import MIN_TURN_ROOM, default_context_reserve, prompt_room
    from app.pipeline.tokenizers import default_tokenizer
    reserve = default_context_reserve(flavor) if service.fields == 2 else 0
    room = prompt_room(template, service.fields, flavor, default_tokenizer(), reserve)
    if room < MIN_TURN_ROOM:
        raise ManifestError(f"flavor '{flavor.name}': the template, the generation length ({flavor.max_generation_length})"
                            f" and the summary context ({reserve}) leave {max(room, 0)} tokens for the transcript"
                            f" in a context of {flavor.total_context_length} tokens")
