"""Load YAML into pydantic models with errors that name the file, the key and the fix.

Also the string rules every config shares: ``${VAR}`` expansion, the placeholders and confinement
of file globs (:func:`check_glob`), and how a value reads in a message (:func:`shown`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
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


#: placeholders of a file glob: the raw patient id, the matched patient folder's name, and (first
#: only, followed by '/') the export root instead of the patient folder
PLACEHOLDERS = ("patient", "folder", "source")
PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDER_HELP = ("{patient} (the raw patient id), {folder} (the patient folder's name), "
                     "{source}/ at the start (the export root instead of the patient folder)")
SOURCE_PREFIX = "{source}"


def split_source(pattern: str) -> tuple[bool, str]:
    """``(anchored at source, rest)``: ``"{source}/masks/*"`` -> ``(True, "masks/*")``."""
    if pattern.startswith(SOURCE_PREFIX):
        return True, pattern[len(SOURCE_PREFIX):].lstrip("/")
    return False, pattern


def check_glob(pattern: str, allowed: tuple[str, ...] = PLACEHOLDERS) -> str:
    """Refuse a glob with an unknown placeholder or one that could leave ``source``.

    Checked when the file is loaded, so a typo (``{patiet}``) or an escape (``..``, ``/abs``) is
    an error naming the file and key before any folder is read.
    """
    names = PLACEHOLDER_RE.findall(pattern)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        allowed_txt = _PLACEHOLDER_HELP if allowed == PLACEHOLDERS else (
            ", ".join(f"{{{a}}}" for a in allowed) or "none here")
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} in {pattern!r}; allowed: {allowed_txt}")
    if "{" in PLACEHOLDER_RE.sub("", pattern) or "}" in PLACEHOLDER_RE.sub("", pattern):
        raise ValueError(f"unbalanced brace in {pattern!r}; braces only write placeholders ({_PLACEHOLDER_HELP})")
    anchored, rest = split_source(pattern)
    if anchored and not pattern[len(SOURCE_PREFIX):].startswith("/"):
        raise ValueError(f"{{source}} must be followed by '/' (e.g. '{{source}}/masks/{{patient}}_lesion.nii.gz'), "
                         f"got {pattern!r}")
    if SOURCE_PREFIX in rest:
        raise ValueError(f"{{source}} may only start a path, got {pattern!r}")
    if not rest:
        raise ValueError(f"{pattern!r} names no file; add the path under source")
    expanded = PLACEHOLDER_RE.sub("x", rest)
    if PurePosixPath(expanded).is_absolute() or PureWindowsPath(expanded).drive or expanded.startswith(("~", "\\")):
        raise ValueError(f"absolute path {pattern!r} refused: paths stay inside source; write it relative to "
                         "the patient folder, or start it with {source}/ for the export root")
    if ".." in PurePosixPath(expanded.replace("\\", "/")).parts:
        raise ValueError(f"'..' in {pattern!r} refused: paths stay inside source; start the path with "
                         "{source}/ to reach folders beside the patient folders")
    if anchored and not {"patient", "folder"} & set(names):
        raise ValueError(f"{pattern!r} starts at {{source}}/ but names no patient, so every patient would get the "
                         "same files; put {patient} or {folder} in it (e.g. '{source}/masks/{patient}_lesion.nii.gz')")
    return pattern


def shown(value: Any) -> str:
    """A value as a message shows it: numbers plain (``11.929``, never ``np.float64(11.929)``), text quoted."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        scalar_float = getattr(value, "ndim", None) == 0 and value.dtype.kind == "f"
        # float(str()) keeps a float32 0.1 as 0.1 (its .item() is 0.10000000149011612)
        value = float(str(value)) if scalar_float else value.tolist()
    if isinstance(value, list | tuple):
        inner = ", ".join(shown(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return repr(value)
    return str(int(value)) if isinstance(value, float) and value.is_integer() else repr(value)


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
            got_txt = f" (got {shown(got)})"
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
