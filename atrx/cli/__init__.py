"""The ``atrx`` command: the one composition root above the stages.

``atrx.cli`` is the only package that imports every stage (inside each command, so ``--help`` is
instant); the rest of ``atrx`` is the ground floor the stages share and imports none of them.
Modules are split by stage: :mod:`atrx.cli.ingest`, :mod:`~atrx.cli.features`,
:mod:`~atrx.cli.training`, :mod:`~atrx.cli.serving`, :mod:`~atrx.cli.demo`. Every command runs
inside :class:`atrx.cli._common.AtrxGroup`, the one error handler.
"""

from __future__ import annotations

from typing import Annotated

import typer

from atrx.cli import catalog as _catalog
from atrx.cli import demo as _demo
from atrx.cli import features as _features
from atrx.cli import ingest as _ingest
from atrx.cli import serving as _serving
from atrx.cli import stability as _stability
from atrx.cli import training as _training
from atrx.cli._common import AtrxGroup, setup_logging

__all__ = ["app", "main"]

app = typer.Typer(cls=AtrxGroup, help="ATRX Fusion: multicenter brain MRI to a served ATRX prediction.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
center_app = typer.Typer(help="Onboard a center: check its YAML against its export.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry (BentoML model store): list, show, promote.",
                         no_args_is_help=True)
app.add_typer(center_app, name="center")
app.add_typer(models_app, name="models")


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    setup_logging(verbose)


_ingest.register(app, center_app)
_catalog.register(app)
_features.register(app)
_stability.register(app)
_training.register(app, models_app)
_serving.register(app)
_demo.register(app)


def main() -> None:
    """The installed ``atrx`` entry point (also ``python -m atrx.cli``)."""
    app(prog_name="atrx")
