"""``python -m atrx.cli``: the same entry point as the installed ``atrx``."""

from atrx.cli import main

main()
