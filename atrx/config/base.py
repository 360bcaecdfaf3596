"""Load YAML into pydantic models with errors that name the file, the key and the fix."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from atrx.errors import InputError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class ConfigError(InputError):
    """A configuration file is unreadable or invalid. ``problems`` holds one line per error."""

    def __init__(self, path: str | os.PathLike[str], problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{self.path}: invalid configuration\n" + "\n".join(f"  - {p}" for p in problems),
                         fix=f"edit {self.path} as each line says")


_ENV = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m["name"])
        if value is None:
            if m["default"] is None:
                raise KeyError(m["name"])
            return m["default"]
        return value

    return _ENV.sub(sub, text)


def _hint(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "remove it or check its spelling against the documented keys"
    if kind == "missing":
        return "add this key"
    if kind in ("literal_error", "enum"):
        return "use one of the allowed values"
    return "fix the value"


def format_validation_error(e: ValidationError) -> list[str]:
    """One line per pydantic error: ``key.path: message (got X); fix``."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<top level>"
        got = err.get("input")
        got_txt = ""
        if err["type"] != "missing" and not isinstance(got, dict | list):
            got_txt = f" (got {got!r})"
        lines.append(f"{loc}: {err['msg']}{got_txt}; {_hint(err)}")
    return lines


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(p, [f"file not found; check the path (cwd is {Path.cwd()})"])
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(p, [f"{where}not valid YAML ({getattr(e, 'problem', e)}); fix the syntax"]) from e
    if data is None:
        raise ConfigError(p, ["the file is empty; write the configuration keys"])
    if not isinstance(data, dict):
        raise ConfigError(p, [f"expected a mapping of keys at the top level, got {type(data).__name__}"])
    return data


def load_yaml_model(model: type[M], path: str | os.PathLike[str], **context: Any) -> M:
    """Read ``path`` and validate it as ``model``; ``context`` reaches validators (e.g. ``base_dir``)."""
    data = read_yaml(path)
    try:
        return model.model_validate(data, context={"config_path": str(path), **context})
    except ValidationError as e:
        raise ConfigError(path, format_validation_error(e)) from e
