"""Torch operations and host syncs per patient on the radiomics engine's torch backend.

    .venv/bin/python benchmarks/radiomics/ops.py [--sizes 5000 30000] [--against REV] [--no-write]

On a GPU each operation is a kernel launch issued from Python with the GIL held, and each host
sync (``.item()``, ``.tolist()``, ``torch.equal``, ``nonzero``, ``unique``, boolean indexing)
waits for the device; the task threads of a GPU worker share one GIL, so operations per patient
bound its throughput whatever the GPU's speed. The same code runs on every device (CUDA adds the
copies of the results to the host), so this counts on the CPU device, here, without a GPU: one patient (three nested ROIs of an image, as
``benchmarks/radiomics/run.py`` builds them) through one ``extract_rois`` call with the shipped
parameter file, counted by a ``TorchDispatchMode``.

``--against REV`` counts the same patients on the tree of git revision ``REV`` too (``git
archive`` into a temporary directory, run in a subprocess), in the same run, and gives the ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, "1")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _record import publish  # noqa: E402

#: aten operations whose result the host must read, so they wait for the device
SYNCS = {"equal", "_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive",
         "masked_select", "repeat_interleave"}


def count(sizes: list[int]) -> dict[int, dict[str, object]]:
    """{overall voxels: {"ops": n, "syncs": {kind: n}}} for one patient per size, on this tree."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    sys.path.insert(0, str(ROOT / "benchmarks" / "radiomics"))
    from run import patient

    from features.engine.batch import extract_rois
    from features.radiomics import load_params, pyradiomics_params

    # as run.py and the features job hand the file to the engine: without our own keys
    params = pyradiomics_params(load_params(ROOT / "features" / "params" / "radiomics.yaml"))

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = 0
            self.syncs: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            name = func.__name__.split(".")[0]
            self.ops += 1
            if name in SYNCS:
                self.syncs[name] += 1
            elif name in ("index", "index_put_", "index_put") and len(args) > 1 and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()):
                self.syncs[f"{name}[bool]"] += 1
            return func(*args, **(kwargs or {}))

    out: dict[int, dict[str, object]] = {}
    for i, size in enumerate(sizes):
        image, masks = patient(size, seed=100 + i)
        extract_rois(image, masks, params, "cpu")  # numba's compilation, outside the count
        with Count() as c:
            extract_rois(image, masks, params, "cpu")
        out[size] = {"ops": c.ops, "syncs": dict(c.syncs)}
    return out


def count_at(rev: str, sizes: list[int]) -> dict[int, dict[str, object]]:
    """:func:`count` on the tree of git revision ``rev``, in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=False,
                             capture_output=True)
        if got.returncode:
            sys.exit(f"ops.py: --against {rev}: git archive failed ({got.stderr.decode().strip()});"
                     " give a commit of this repository, e.g. HEAD~1")
        tree = Path(tmp)
        with tarfile.open(fileobj=io.BytesIO(got.stdout)) as tar:
            tar.extractall(tree, filter="data")
        script = tree / "benchmarks" / "radiomics" / "ops.py"
        script.write_text(Path(__file__).read_text())  # this counter, on that tree's engine
        done = subprocess.run([sys.executable, str(script), "--json", "--sizes", *map(str, sizes)],
                              check=True, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
        return {int(k): v for k, v in json.loads(done.stdout.splitlines()[-1]).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[5000, 30000])
    ap.add_argument("--against", default=None, help="a git revision to count in the same run")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # count_at's child
    args = ap.parse_args()
    if args.json:
        print(json.dumps(count(args.sizes)))
        return
    base = count_at(args.against, args.sizes) if args.against else None  # a bad REV fails first
    ours = count(args.sizes)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         check=False, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "features"],
                           check=False, capture_output=True, text=True).stdout.strip()
    here = f"{rev}{' + uncommitted changes' if dirty else ''}"
    lines = [f"\n### Torch backend: operations and host syncs per patient, {dt.date.today()}\n\n",
             "Command: `.venv/bin/python benchmarks/radiomics/ops.py --sizes "
             f"{' '.join(map(str, args.sizes))}"
             f"{f' --against {args.against}' if args.against else ''}` (tree {here}; one patient "
             "= three nested ROIs of one image, one `extract_rois` call, radiomics.yaml; counted "
             "on the CPU device, the same code as on CUDA)\n\n"]
    if base:
        lines.append(f"| overall ROI voxels | ops ({args.against}) | ops (this tree) | ratio "
                     f"(this / {args.against}) | host syncs ({args.against}) | host syncs "
                     "(this tree) |\n|---|---|---|---|---|---|\n")
    else:
        lines.append("| overall ROI voxels | ops | host syncs | syncs by kind |\n|---|---|---|---|\n")
    for size in args.sizes:
        o = ours[size]
        n_syncs = sum(o["syncs"].values())  # type: ignore[union-attr]
        print(f"{size} voxels: {o['ops']} ops, {n_syncs} host syncs {o['syncs']}", flush=True)
        if base:
            b = base[size]
            lines.append(f"| {size} | {b['ops']} | {o['ops']} | {o['ops'] / b['ops']:.2f} | "
                         f"{sum(b['syncs'].values())} | {n_syncs} |\n")
        else:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(o["syncs"].items()))
            lines.append(f"| {size} | {o['ops']} | {n_syncs} | {kinds} |\n")
    publish("".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
