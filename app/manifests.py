"""Service manifests: the Service and Flavor types, and loading + validating one manifest file.

A manifest is `services/<name>.json` (or `.yaml`/`.yml`) in the seed's format, next to the
prompt template `<name>.txt` whose `{}` placeholders are filled in order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class Service:
    """A loaded, validated service: its manifest, flavors and template location."""

    name: str
    fields: int
    flavors: tuple[Flavor, ...]
    template_path: str
    manifest_path: str
    type: str = "summary"
    description: dict[str, str] = field(default_factory=dict)
    backend: str = "vLLM"
    raw: dict[str, Any] = field(default_factory=dict)  # the manifest as written (seed shape)

    def flavor(self, name: str | None) -> Flavor | None:
        """The flavor called `name`; with no name, the only flavor if there is exactly one."""
        if name is None or name == "":
            return self.flavors[0] if len(self.flavors) == 1 else None
        return next((f for f in self.flavors if f.name == name), None)
