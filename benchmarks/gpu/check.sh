#!/usr/bin/env bash
# The GPU check of the torch radiomics backend (features/engine/tensor), one script, < 8 minutes on
# one H100/H200: the agreement tests on CUDA, then the benchmark with --device cuda.
#
#     benchmarks/gpu/check.sh            # from the repository root, after `make install`
#
# CUDA torch: nothing is installed here. `make install` pins torch==2.14.1 from PyPI, which on
# Linux x86_64 is a CUDA build (its wheel pulls the nvidia-* CUDA runtime wheels); the script
# prints torch.version.cuda and stops (exit 2) where torch is a CPU build or sees no GPU. On a
# machine whose driver is too old for that build, install the matching wheel from
# https://download.pytorch.org/whl/cu1XX by hand (same torch version) before running this.
#
# Steps (each printed with its time): nvidia-smi; torch's CUDA build and device; the agreement
# table on CUDA (`pytest tests/test_engine_agreement.py -k cuda`: every generated case, the
# 100k-voxel ones included, and brain1 against pyradiomics 3.0.1, 1e-4 relative) and the cuda tests of tests/test_engine_tensor.py
# (CUDA against the numba path, 1e-9); then benchmarks/radiomics/run.py --device cuda --no-write
# (ROIs of 5k/30k/100k voxels, one patient, 16 patients batched), pyradiomics at 1 thread and
# one timed repeat for the ratio. Exit status: 2 without a GPU, else the first failing step's.
#
# On this project's lent H200 (../.library/device/KINDS.md, 2026-11): the image's python3 is 3.12
# with torch 2.11+cu130, numba, scipy, pandas and pytest, but no SimpleITK, PyWavelets, zarr or
# pyradiomics, and nothing can be fetched there. Carry cp312 manylinux wheels of what the engine
# imports (SimpleITK, PyWavelets, pyyaml is there) in a folder ignored through .git/info/exclude
# (64 MiB in all) and `python3 -m pip install --no-index --find-links DIR ...` first, then run
# `PY=python3 benchmarks/gpu/check.sh`. pyradiomics 3.0.1 (the agreement table's reference) has no
# wheel and a C extension: build a cp312 wheel where Python 3.12 is (the benchmark's ratio needs it
# too), or set NO_REFERENCE=1 to skip the agreement table and keep the CUDA-against-numba tests.
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
start=$SECONDS
step() { echo; echo "=== [$((SECONDS - start)) s] $*"; }

step "nvidia-smi"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi; then
    echo "check.sh: no NVIDIA GPU here (nvidia-smi missing or failing); this check needs one." >&2
    exit 2
fi

step "torch"
if ! "$PY" - <<'EOF'
import sys

import torch

print(f"torch {torch.__version__}, torch.version.cuda = {torch.version.cuda}, "
      f"cuda available: {torch.cuda.is_available()}")
if torch.version.cuda is None:
    sys.exit("torch is a CPU build: install the CUDA build of the same version (see the top of "
             "benchmarks/gpu/check.sh)")
if not torch.cuda.is_available():
    sys.exit("torch is a CUDA build but sees no GPU (driver too old for this CUDA? see nvidia-smi)")
print("device:", torch.cuda.get_device_name(0), f"({torch.cuda.device_count()} visible)")
x = torch.ones(4, dtype=torch.float64, device="cuda")
print("float64 on cuda:", float((x * 2).sum()))
EOF
then
    echo "check.sh: torch cannot use a GPU here." >&2
    exit 2
fi

status=0
if [ -z "${NO_REFERENCE:-}" ]; then
    step "agreement table on CUDA (pytest -k cuda)"
    "$PY" -m pytest -q -p no:cacheprovider tests/test_engine_agreement.py -k cuda --durations=5
    rc=$?; [ $status -eq 0 ] && status=$rc
else
    step "NO_REFERENCE set: the agreement table against pyradiomics is skipped"
fi

step "torch backend on CUDA against the numba path (tests/test_engine_tensor.py -k cuda)"
"$PY" -m pytest -q -p no:cacheprovider tests/test_engine_tensor.py -k cuda
rc=$?; [ $status -eq 0 ] && status=$rc

step "benchmark: benchmarks/radiomics/run.py --device cuda"
"$PY" benchmarks/radiomics/run.py --device cuda --no-write --sizes 5000 30000 100000 \
    --patient-sizes 30000 --repeats 3 --pyradiomics-repeats 1 --batch-patients 16
rc=$?; [ $status -eq 0 ] && status=$rc

step "done, exit status $status"
exit $status
