"""``atrx.cluster.dask_client`` on a real LocalCluster: what its workers print.

A worker whose heartbeat meets the scheduler closing at the end of a run logs an ERROR with a
traceback (seen in ``atrx demo`` after a successful ingest); task failures reach the job through
their futures, so the workers' terminal handlers stay at CRITICAL unless ATRX_DEBUG asks for more.
"""

from __future__ import annotations

import logging

import pytest

from atrx.cluster import dask_client


def _stream_handler_levels() -> list[int]:
    handlers = logging.getLogger("distributed").handlers
    return sorted({h.level for h in handlers if isinstance(h, logging.StreamHandler)})


@pytest.mark.parametrize(("debug", "level"), [("", logging.CRITICAL), ("1", logging.ERROR)])
def test_workers_print_only_what_a_user_needs(monkeypatch: pytest.MonkeyPatch, debug: str,
                                              level: int) -> None:
    monkeypatch.setenv("ATRX_DEBUG", debug)
    with dask_client(workers=1) as client:
        (levels,) = client.run(_stream_handler_levels).values()
    assert levels == [level]
