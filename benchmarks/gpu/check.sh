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
# (ROIs of 5k/30k/100k voxels, one patient, 16 patients batched, and 16 patients over 1, 4 and
# all host threads sharing the GPU), pyradiomics at 1 thread and one timed repeat for the ratio. Exit status: 2 without a GPU, else the first failing step's.
#
# On this project's lent H200 (../.library/device/KINDS.md, 2026-11): the image's python3 is 3.12
# with torch 2.11+cu130, numba, scipy, pandas and pytest, but no SimpleITK, PyWavelets,
# connected-components-3d or pyradiomics, and nothing can be fetched there. Here, once per
# version change: `.venv/bin/python benchmarks/gpu/carry.py` packs them into `.gpu/` (ignored by
# git; about 32 MiB of the 64 a call carries): the cp312 wheels' packages as site.tar.xz and
# pyradiomics 3.0.1's sources. There: `PY=python3 benchmarks/gpu/check.sh`, with `.gpu` in the
# run's carry. After the GPU checks it unpacks .gpu/ into /tmp and compiles pyradiomics' two C
# extensions with the machine's compiler (benchmarks/gpu/unpack.py); where that cannot be done it
# says why and sets NO_REFERENCE=1, which skips the agreement table against pyradiomics, keeps
# the CUDA-against-numba tests (the numba engine's agreement with pyradiomics is tested on the
# CPU in every test run) and benchmarks against the numba engine (run.py --baseline numba).
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the repository itself: nothing is installed
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

if [ -d .gpu ]; then
    step "carried packages (.gpu/ from benchmarks/gpu/carry.py)"
    cat .gpu/MANIFEST.txt 2>/dev/null
    paths=$("$PY" benchmarks/gpu/unpack.py .gpu /tmp/atrx-gpu)
    rc=$?
    echo "$paths"
    [ $rc -eq 2 ] && exit 2
    [ $rc -eq 3 ] && export NO_REFERENCE=1
    export PYTHONPATH="$PYTHONPATH:$(echo "$paths" | tail -n 1)"
    "$PY" -c "import SimpleITK, pywt, cc3d; print('SimpleITK', SimpleITK.Version_VersionString(), '| pywt', pywt.__version__, '| cc3d', cc3d.__file__)" \
        || { echo "check.sh: the carried packages do not import with $PY" >&2; exit 2; }
    if [ -z "${NO_REFERENCE:-}" ] && ! "$PY" -c "import radiomics; print('pyradiomics', radiomics.__version__, radiomics.__file__)"; then
        echo "check.sh: the pyradiomics built here does not import; NO_REFERENCE=1" >&2
        export NO_REFERENCE=1
    fi
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

baseline=pyradiomics
[ -n "${NO_REFERENCE:-}" ] && baseline=numba  # then ours against the numba engine on one core
step "benchmark: benchmarks/radiomics/run.py --device cuda --baseline $baseline"
# the throughput table: 16 patients over 1, 4 and all host threads sharing the GPU, as the
# threads of a GPU worker under `atrx features --gpus` do
threads="1 4"; cores=$(nproc); [ "$cores" -gt 4 ] && threads="$threads $cores"
"$PY" benchmarks/radiomics/run.py --device cuda --no-write --sizes 5000 30000 100000 \
    --patient-sizes 30000 --repeats 3 --pyradiomics-repeats 1 --batch-patients 16 \
    --baseline "$baseline" --host-threads $threads --throughput-patients 16
rc=$?; [ $status -eq 0 ] && status=$rc

step "done, exit status $status"
exit $status
