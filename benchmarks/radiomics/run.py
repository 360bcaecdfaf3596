"""Radiomics engines side by side: ROIs per second per core, ours (``features.engine``) vs
pyradiomics 3.0.1, on the same ROIs, with all features of the parameter file including filtering.

    .venv/bin/python benchmarks/radiomics/run.py [--sizes 5000 30000 100000] [--repeats 3]
        [--patient-sizes 30000] [--params features/params/radiomics.yaml] [--no-write]
        [--device cpu|cuda [--batch-patients 8] [--pyradiomics-repeats 1]] [--baseline numba]
        [--host-threads 1 2 [--throughput-patients 8]]

ROIs: irregular z-scored lesions of about the given voxel counts in a 1 mm volume with 20 mm of
margin (as ingest writes them). One process, one thread for SimpleITK, BLAS and numba: "per core".
Each engine runs every ROI ``--repeats`` times after one warm-up call (numba's cache, pyradiomics'
schema); the best time counts. The agreement of the two outputs is printed as the largest
relative difference (the agreement tests hold the tolerance; this only shows it is the same work).

A second table is per patient: one image with three nested ROIs as ingest writes them (overall =
a lesion of about ``--patient-sizes`` voxels, tumor = its core eroded by 4 voxels, edema =
overall minus tumor). Ours runs them in one ``extract_rois`` call (each filter once per source,
features.engine.batch) and, for comparison, one ``extract`` per ROI; pyradiomics runs per ROI.
The ratio is ROIs per second per core, i.e. the ratio of the times for the three ROIs.

``--device cpu|cuda`` runs ours on the torch backend (features.engine.tensor: firstorder and the
texture classes on that device, filters and shape on the numpy engine) instead of the numba path,
and adds a batched table: ``--batch-patients`` patients' ROIs (three each, of the first
``--patient-sizes``) filtered on the host, then all their (ROI, image) jobs in one torch call,
against the numba path on the same filtered images (both timings include discretisation, not
filtering). ``--pyradiomics-repeats`` (default ``--repeats``) shortens pyradiomics' side.
``--baseline numba`` measures ours against the numba engine on one thread instead of
pyradiomics, for a machine without pyradiomics (the lent GPU machine, benchmarks/gpu/check.sh);
the CPU runs give the numba engine's own ratio to pyradiomics.

``--host-threads 1 2 ...`` adds a throughput table: ``--throughput-patients`` patients (three ROIs
each, of the first ``--patient-sizes``), one ``extract_rois`` call per patient, spread over that
many threads of one process, as a GPU worker's threads share its device (or, without
``--device``, as the numba path's kernels release the GIL). Its ratio is the machine's ROIs per
second against one baseline core, whose per-patient time is the mean over the first
``min(4, patients)`` patients, run once in the same run; the threads column says how many host
cores that machine used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _record import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def lesion(voxels: int, seed: int) -> tuple[sitk.Image, sitk.Image]:
    """A z-scored smooth noisy volume and an irregular lesion of about ``voxels`` voxels."""
    rng = np.random.default_rng(seed)
    radius = (3 * voxels / (4 * np.pi)) ** (1 / 3)
    n = int(2 * radius + 44)
    shape = (n, n, n)
    noise = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32)), 2.0))
    img = noise / noise.std() + 0.35 * rng.normal(size=shape)
    img = ((img - img.mean()) / img.std()).astype(np.float32)
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    c = n / 2
    d = np.sqrt(((zz - c) / (radius * 1.1)) ** 2 + ((yy - c) / radius) ** 2
                + ((xx - c) / (radius * 0.9)) ** 2)
    mask = (d + 0.1 * noise / noise.std() <= 1.0).astype(np.uint8)
    image = sitk.GetImageFromArray(img)
    m = sitk.GetImageFromArray(mask)
    m.CopyInformation(image)
    return image, m


def best_of(fn, repeats: int) -> tuple[float, dict]:
    out = fn()  # warm-up
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def max_rel_diff(a: dict, b: dict) -> float:
    worst = 0.0
    for k, ref in b.items():
        x, r = float(a[k]), float(ref)
        if np.isnan(r) and np.isnan(x):
            continue
        if abs(r) < 1e-9:
            worst = max(worst, abs(x - r))
        else:
            worst = max(worst, abs(x - r) / abs(r))
    return worst


def patient(voxels: int, seed: int) -> tuple[sitk.Image, dict[str, sitk.Image]]:
    """An image of :func:`lesion` and its edema, tumor (core eroded by 4 voxels) and overall."""
    image, overall = lesion(voxels, seed)
    core = sitk.BinaryErode(overall, [4, 4, 4])
    edema = sitk.And(overall, sitk.Not(core))
    return image, {"edema": edema, "tumor": core, "overall": overall}


def patient_rows(sizes: list[int], repeats: int, params: dict, device: str | None = None,
                 ref_repeats: int | None = None, baseline: str = "pyradiomics") -> list[str]:
    """The per-patient table: ours per patient and per ROI against the baseline per ROI."""
    from features.engine import extract
    from features.engine.batch import extract_rois

    reference, ref_name = baseline_extractor(baseline)

    rows = []
    for i, size in enumerate(sizes):
        image, masks = patient(size, seed=100 + i)
        counts = [int(sitk.GetArrayViewFromImage(m).sum()) for m in masks.values()]
        batch_s, batch = best_of(lambda im=image, ms=masks: extract_rois(im, ms, params, device),
                                 repeats)
        roi_s, _ = best_of(lambda im=image, ms=masks: [extract(im, m, params, device)
                                                      for m in ms.values()], repeats)
        ref_s, refs = best_of(lambda im=image, ms=masks: [reference(im, m, params)
                                                          for m in ms.values()],
                              repeats if ref_repeats is None else ref_repeats)
        diff = max(max_rel_diff(batch[name], {k: v for k, v in ref.items()
                                              if not k.startswith("diagnostics_")})
                   for name, ref in zip(masks, refs, strict=True))
        print(f"patient {'/'.join(map(str, counts))} voxels: per patient {batch_s:.3f} s, per ROI "
              f"{roi_s:.3f} s, {ref_name} {ref_s:.3f} s -> {ref_s / batch_s:.1f}x (per ROI "
              f"{ref_s / roi_s:.1f}x; max rel diff {diff:.1e})", flush=True)
        rows.append(f"| {' / '.join(map(str, counts))} | {batch_s:.3f} | {roi_s:.3f} | {ref_s:.3f} "
                    f"| {ref_s / batch_s:.1f} | {ref_s / roi_s:.1f} | {roi_s / batch_s:.2f} "
                    f"| {diff:.1e} |\n")
    return ["\nPer patient: three nested ROIs of one image (edema / tumor / overall voxels), ours "
            f"({device or 'numba'}) in one `extract_rois` call (each filter once per source) and "
            f"per ROI, {ref_name} per ROI; ratios are ROIs/s per core.\n\n",
            f"| ROI voxels | ours per patient s | ours per ROI s | {ref_name} s | ratio per patient "
            f"(ours / {ref_name}) | ratio per ROI | per patient / per ROI | max rel diff |\n"
            "|---|---|---|---|---|---|---|---|\n", *rows]


def baseline_extractor(baseline: str) -> tuple[Callable[..., dict], str]:
    """(extract(image, mask, params), name) of the side ours is measured against: pyradiomics
    3.0.1, or (``numba``, where pyradiomics cannot be installed, as on the lent GPU machine) our
    numba engine on one thread, whose own ratio to pyradiomics the CPU runs of this script give."""
    if baseline == "pyradiomics":
        from features.radiomics import extract_pyradiomics

        return extract_pyradiomics, "pyradiomics"
    from features.engine import extract

    return (lambda image, mask, params: extract(image, mask, params, None)), "numba engine"


def batched_rows(n_patients: int, size: int, repeats: int, params: dict, device: str
                 ) -> list[str]:
    """ROIs per second of the texture work of ``n_patients`` patients: one torch call against the
    numba path, on the same filtered images (discretisation included, filtering not)."""
    from features.engine import filters
    from features.engine.extract import add_image_features
    from features.engine.geometry import RoiGeometry
    from features.engine.settings import parse_params
    from features.engine.tensor.driver import TextureJobs

    engine_params = parse_params(params)
    work = []  # (ROI, image name, filtered box, geometry, image type, spacing)
    for p in range(n_patients):
        image, masks = patient(size, seed=300 + p)
        for name, mask in masks.items():
            roi = filters.prepare(image, mask, engine_params)
            geometry = RoiGeometry.from_mask(roi.mask)
            for image_type in engine_params.image_types:
                for image_name, array in filters.images(roi, image_type):
                    work.append((f"{p}/{name}", image_name, array, geometry, image_type,
                                 roi.spacing))
    n_rois = 3 * n_patients

    def torch_run() -> dict[str, dict[str, float]]:
        outs: dict[str, dict[str, float]] = {}
        jobs = TextureJobs(engine_params, device)
        for roi, image_name, array, geometry, image_type, spacing in work:
            jobs.add(roi, outs.setdefault(roi, {}), image_name, array, geometry, image_type,
                     spacing)
        assert not jobs.run()
        return outs

    def numba_run() -> dict[str, dict[str, float]]:
        outs: dict[str, dict[str, float]] = {}
        for roi, image_name, array, geometry, image_type, spacing in work:
            add_image_features(outs.setdefault(roi, {}), image_name, array, geometry, image_type,
                               engine_params, spacing)
        return outs

    torch_s, got = best_of(torch_run, repeats)
    numba_s, ref = best_of(numba_run, repeats)
    diff = max(max_rel_diff(got[k], ref[k]) for k in ref)
    print(f"batched: {n_patients} patients, {n_rois} ROIs, {len(work)} jobs: torch ({device}) "
          f"{torch_s:.3f} s = {n_rois / torch_s:.2f} ROIs/s, numba {numba_s:.3f} s = "
          f"{n_rois / numba_s:.2f} ROIs/s (max rel diff {diff:.1e})", flush=True)
    return [f"\nBatched ({device}): {n_patients} patients x 3 ROIs of a {size}-voxel lesion, "
            f"{len(work)} (ROI, image) jobs in one torch call against the numba path on the same "
            "filtered images (discretisation included, filtering not).\n\n",
            "| ROIs | jobs | torch s | torch ROIs/s | numba s | numba ROIs/s | max rel diff |\n"
            "|---|---|---|---|---|---|---|\n",
            f"| {n_rois} | {len(work)} | {torch_s:.3f} | {n_rois / torch_s:.2f} | {numba_s:.3f} "
            f"| {n_rois / numba_s:.2f} | {diff:.1e} |\n"]


def throughput_rows(n_patients: int, size: int, threads: list[int], repeats: int, params: dict,
                    device: str | None, baseline: str) -> list[str]:
    """ROIs per second of ``n_patients`` patients through ``threads`` host threads, against one
    baseline core (see the module docstring)."""
    from concurrent.futures import ThreadPoolExecutor

    from features.engine.batch import extract_rois

    reference, ref_name = baseline_extractor(baseline)
    patients = [patient(size, seed=500 + p) for p in range(n_patients)]
    n_ref = min(4, n_patients)
    t = time.perf_counter()
    for image, masks in patients[:n_ref]:
        for mask in masks.values():
            reference(image, mask, params)
    ref_per_patient = (time.perf_counter() - t) / n_ref
    n_rois = 3 * n_patients
    rows = []
    for n_threads in threads:
        with ThreadPoolExecutor(n_threads) as pool:
            def run_all(pool=pool) -> dict:
                return dict(enumerate(pool.map(lambda p: extract_rois(*p, params, device),
                                               patients)))

            wall, _ = best_of(run_all, repeats)
        ratio = ref_per_patient * n_patients / wall
        print(f"throughput: {n_patients} patients on {n_threads} thread(s) ({device or 'numba'}): "
              f"{wall:.3f} s = {n_rois / wall:.2f} ROIs/s -> {ratio:.1f}x one {ref_name} core "
              f"({ref_per_patient:.3f} s per patient)", flush=True)
        rows.append(f"| {n_threads} | {n_patients} | {n_rois} | {wall:.3f} | {n_rois / wall:.2f} "
                    f"| {ref_per_patient:.3f} | {ratio:.1f} |\n")
    return [f"\nThroughput ({device or 'numba'}): {n_patients} patients x 3 ROIs of a {size}-voxel "
            "lesion, one `extract_rois` call per patient, spread over the host threads of one "
            f"process (the machine has {os.cpu_count()} cores); ratio = ROIs/s against one "
            f"{ref_name} core (its per-patient time: the mean of {n_ref} patients, same run).\n\n",
            f"| host threads | patients | ROIs | ours wall s | ROIs/s | {ref_name} s per patient "
            f"| ratio (machine / one {ref_name} core) |\n|---|---|---|---|---|---|---|\n", *rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[5000, 30000, 100000])
    ap.add_argument("--patient-sizes", type=int, nargs="*", default=[30000],
                    help="overall ROI sizes of the per-patient table (none: no table)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--params", default=str(ROOT / "features" / "params" / "radiomics.yaml"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None,
                    help="run ours on the torch backend on this device (default: the numba path)")
    ap.add_argument("--batch-patients", type=int, default=8,
                    help="with --device: patients in the batched table (0: no table)")
    ap.add_argument("--pyradiomics-repeats", type=int, default=None,
                    help="repeats of the baseline's side (default: --repeats)")
    ap.add_argument("--baseline", choices=["pyradiomics", "numba"], default="pyradiomics",
                    help="what ours is measured against (numba: where pyradiomics is missing)")
    ap.add_argument("--host-threads", type=int, nargs="*", default=[],
                    help="thread counts of the throughput table (none: no table)")
    ap.add_argument("--throughput-patients", type=int, default=8,
                    help="patients in the throughput table")
    args = ap.parse_args()
    ref_repeats = args.repeats if args.pyradiomics_repeats is None else args.pyradiomics_repeats
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)

    from features.engine import ENGINE_NAME, ENGINE_VERSION, extract
    from features.radiomics import load_params, pyradiomics_params

    reference, ref_name = baseline_extractor(args.baseline)

    # without our own keys (engine, reference), as the features job hands both engines the file
    params = pyradiomics_params(load_params(args.params))
    device_title = device_flags = ""
    if args.device:
        import torch

        from features.engine.tensor import resolve_device

        resolve_device(args.device)  # a clear error before any work
        gpu = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
        device_title = f", torch backend on {args.device} ({gpu}, torch {torch.__version__})"
        device_flags = (f" --device {args.device} --batch-patients {args.batch_patients} "
                        f"--pyradiomics-repeats {ref_repeats}")
    if args.baseline != "pyradiomics":
        device_flags += f" --baseline {args.baseline}"
    if args.host_threads:
        device_flags += (f" --host-threads {' '.join(map(str, args.host_threads))} "
                         f"--throughput-patients {args.throughput_patients}")
    rows = []
    for i, size in enumerate(args.sizes):
        image, mask = lesion(size, seed=i)
        n = int(sitk.GetArrayViewFromImage(mask).sum())
        ours_s, ours = best_of(lambda im=image, m=mask: extract(im, m, params, args.device),
                               args.repeats)
        ref_s, ref = best_of(lambda im=image, m=mask: reference(im, m, params), ref_repeats)
        ref = {k: v for k, v in ref.items() if not k.startswith("diagnostics_")}
        diff = max_rel_diff(ours, ref)
        rows.append((size, n, len(ref), ours_s, ref_s, diff))
        print(f"{n} voxels, {len(ref)} features: ours {ours_s:.3f} s, {ref_name} {ref_s:.3f} s "
              f"-> {ref_s / ours_s:.1f}x (max rel diff {diff:.1e})", flush=True)
    lines = [
        f"\n### Radiomics engine{device_title}, {dt.date.today()} ({platform.machine()}, 1 "
        f"thread, load average at start {', '.join(f'{x:.1f}' for x in os.getloadavg())})\n\n",
        f"Command: `.venv/bin/python benchmarks/radiomics/run.py --sizes "
        f"{' '.join(map(str, args.sizes))} --patient-sizes {' '.join(map(str, args.patient_sizes))} "
        f"--repeats {args.repeats}{device_flags}` "
        f"({Path(args.params).name}; {ENGINE_NAME} {ENGINE_VERSION} vs "
        f"{'pyradiomics 3.0.1' if args.baseline == 'pyradiomics' else 'its numba path, 1 thread'})\n\n",
    ]
    if rows:
        total_ours = sum(r[3] for r in rows)
        total_ref = sum(r[4] for r in rows)
        lines += [
            f"| ROI voxels | features | ours s | {ref_name} s | ROIs/s per core, ratio (ours / "
            f"{ref_name}) | max rel diff |\n|---|---|---|---|---|---|\n",
            *(f"| {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[4] / r[3]:.1f} | {r[5]:.1e} |\n"
              for r in rows),
            f"| all | | {total_ours:.3f} | {total_ref:.3f} | {total_ref / total_ours:.1f} | |\n",
        ]
    if args.patient_sizes:
        lines += patient_rows(args.patient_sizes, args.repeats, params, args.device, ref_repeats,
                              args.baseline)
    if args.device and args.batch_patients:
        lines += batched_rows(args.batch_patients, (args.patient_sizes or [30000])[0],
                              args.repeats, params, args.device)
    if args.host_threads:
        lines += throughput_rows(args.throughput_patients, (args.patient_sizes or [30000])[0],
                                 args.host_threads, args.repeats, params, args.device,
                                 args.baseline)
    publish("".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
