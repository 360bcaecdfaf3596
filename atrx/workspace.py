"""The workspace ``<home>``: one folder (or fsspec URL) that holds every store.

Resolution order: an explicit ``--home``, then ``ATRX_HOME``, then ``./.atrx``. Read at call time,
never at import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from atrx.errors import InputError

HOME_ENV = "ATRX_HOME"
DEFAULT_HOME = ".atrx"


def resolve_home(home: str | os.PathLike[str] | None = None) -> str:
    """Return the workspace location as a string (absolute for local paths)."""
    raw = str(home) if home is not None else os.environ.get(HOME_ENV, DEFAULT_HOME)
    if "://" in raw:
        return raw.rstrip("/")
    return str(Path(raw).expanduser().resolve())


@dataclass(frozen=True)
class Workspace:
    """Paths of the stores under one ``home``. Creating the object touches nothing on disk."""

    home: str

    @classmethod
    def at(cls, home: str | os.PathLike[str] | None = None) -> Workspace:
        return cls(resolve_home(home))

    @property
    def is_local(self) -> bool:
        return "://" not in self.home

    def _join(self, *parts: str) -> str:
        return "/".join([self.home, *parts])

    @property
    def images(self) -> str:
        """Zarr store: ``{center}/{patient}/{study}/v{version}/{array}``."""
        return self._join("images.zarr")

    @property
    def catalog(self) -> str:
        """DuckDB catalog (scans, clinical, labels, quarantine, runs, lineage). Local only."""
        if not self.is_local:
            raise InputError(
                f"the DuckDB catalog must live on a local path, but home is {self.home!r}",
                fix="run the driver with a local --home and let workers share the image store",
            )
        return self._join("catalog.duckdb")

    @property
    def offline(self) -> str:
        """Parquet offline feature store."""
        return self._join("offline")

    @property
    def online(self) -> str:
        """SQLite online store used by Feast by default."""
        return self._join("online.db")

    @property
    def feast_registry(self) -> str:
        return self._join("feast_registry.db")

    @property
    def runs(self) -> str:
        """Training runs: ``runs/<run_id>/{metrics.json, report.html, *.png}``."""
        return self._join("runs")

    @property
    def logs(self) -> str:
        return self._join("logs")

    @property
    def bentoml_home(self) -> str:
        return os.environ.get("BENTOML_HOME", self._join("bentoml"))

    def ensure(self) -> None:
        """Create the local folders the stores need (no-op for remote homes)."""
        if self.is_local:
            for p in (self.home, self.offline, self.runs, self.logs):
                Path(p).mkdir(parents=True, exist_ok=True)
