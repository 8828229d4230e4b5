"""The JSON contract's test helpers: the schemas as validators, shapes, docs/JSON.md's examples.

The schemas are provision/data/json-schema/*.json (draft 2020-12); their `$id`s are names
under SCHEMA_BASE, resolved here from the files themselves, never fetched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from provision.assets import data_file
from tests.helpers import REPO_ROOT

SCHEMA_DIR = data_file("json-schema")
SCHEMA_BASE = "https://gpu-provision.invalid/json-schema/"
COMMANDS = ("probe", "fit", "models", "plan", "diff", "apply", "rollback", "verify")
JSON_DOC = REPO_ROOT / "docs" / "JSON.md"


@cache
def schemas() -> dict[str, dict[str, Any]]:
    """File stem -> schema."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(SCHEMA_DIR.glob("*.json"))}


@cache
def _registry() -> Registry:  # type: ignore[type-arg]
    resources = [(s["$id"], Resource.from_contents(s)) for s in schemas().values()]
    return Registry().with_resources(resources)


def validator(name: str) -> Draft202012Validator:
    """`name`: a command, or "common" (the envelope alone, for a run with no command)."""
    return Draft202012Validator(schemas()[name], registry=_registry())


def problems(document: Any, name: str) -> list[str]:
    """Every way `document` breaks the schema `name`, one line each (empty: it is valid)."""
    found = validator(name).iter_errors(document)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in found]


def assert_valid(document: Any, command: str | None) -> None:
    name = command if command in COMMANDS else "common"
    broken = problems(document, name)
    assert not broken, f"{name} document breaks its schema:\n" + "\n".join(broken[:20])


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def shape(value: Any, path: str = "") -> set[tuple[str, str]]:
    """(path, JSON type) of every value in a document; list items share the path `[]`."""
    found = {(path, _kind(value))}
    if isinstance(value, dict):
        for key, item in value.items():
            found |= shape(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            found |= shape(item, f"{path}[]")
    return found


# --- docs/JSON.md ------------------------------------------------------------------------------

# One example: the marker names the command line (after `provision`) and its exit status; the
# generated part (a console line and the JSON) runs up to the closing marker.
EXAMPLE = re.compile(
    r"<!-- example exit=(?P<exit>\d+): provision (?P<args>[^\n]*?) -->\n"
    r"(?P<body>.*?)"
    r"<!-- /example -->",
    re.DOTALL,
)
_JSON_BLOCK = re.compile(r"```json\n(?P<json>.*?)```", re.DOTALL)
# A placeholder in the examples' command lines: a copy of tests/data/stock-root, made per run.
ROOT_PLACEHOLDER = "$ROOT"
# Lists longer than this are cut in the docs (a schema sets no minimum length, so the cut
# example stays valid and its shape stays a part of the real one).
DOC_LIST_ITEMS = 2


@dataclass(frozen=True)
class Example:
    args: tuple[str, ...]
    exit_code: int
    document: dict[str, Any] | None  # None: not generated yet
    span: tuple[int, int]  # of the whole example, markers included, in the file's text

    @property
    def command(self) -> str:
        return self.args[0]


def examples(text: str) -> list[Example]:
    found = []
    for match in EXAMPLE.finditer(text):
        block = _JSON_BLOCK.search(match["body"])
        found.append(
            Example(
                args=tuple(match["args"].split()),
                exit_code=int(match["exit"]),
                document=json.loads(block["json"]) if block else None,
                span=match.span(),
            )
        )
    return found


def cut_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: cut_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return [cut_lists(v) for v in value[:DOC_LIST_ITEMS]]
    return value


def example_text(args: tuple[str, ...], exit_code: int, document: dict[str, Any]) -> str:
    """A whole example, markers included: what a reader types, and what it prints (cut)."""
    command = " ".join(args)
    shown = json.dumps(cut_lists(document), indent=2)
    return (
        f"<!-- example exit={exit_code}: provision {command} -->\n"
        f"```console\n$ provision {command}   # exit status {exit_code}\n```\n\n"
        f"```json\n{shown}\n```\n"
        "<!-- /example -->"
    )
