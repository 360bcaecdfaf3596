"""The error family crosses process boundaries: Dask workers and spawned processes pickle errors."""

from __future__ import annotations

import pickle

import pytest

from atrx.config.base import ConfigError
from atrx.errors import AtrxError, ExitCode, InputError
from atrx.stability import StabilityNotFoundError
from features.errors import FeaturesJobError


@pytest.mark.parametrize("err", [
    ConfigError("/centers/A.yaml", ["source: not a folder", "masks.lesion: unknown key"]),
    InputError("bad --patients", fix="pass at least 2", exit_code=ExitCode.BAD_INPUT),
    StabilityNotFoundError("no table", fix="run `atrx stability`"),
    FeaturesJobError("cannot store", fix="check the disk"),
])
def test_errors_survive_pickling_with_message_fix_and_exit_code(err: AtrxError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err) and back.fix == err.fix and back.exit_code == err.exit_code
    assert back.args == err.args and back.__dict__ == err.__dict__


def test_http_errors_with_their_own_constructors_survive_pickling() -> None:
    from serving.errors import FeaturesUnavailable, UnknownPatient
    from serving.server import ServingHTTPError

    for err in (UnknownPatient(["A-1", "A-2"], [0, 3]), FeaturesUnavailable(missing={"patient 'A-1'": ["age"]}),
                ServingHTTPError(401, "bad key")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.__dict__ == err.__dict__
