"""Many ROIs' discretised images laid out as one set of flat tensors on one device.

Every job (one ROI in one filtered image) puts its voxels one after the other into flat tensors
(``job`` tells whose each is) and its box, grown by one voxel of -1 on every side, into one flat
grid of level indices: the grown boxes of all jobs follow each other, so a neighbour lookup
``grid[pos + step]`` never leaves its own job's box and reads -1 outside its ROI, with no bounds
checks (the layout of :func:`features.engine._glcm_kernels.padded_labels`, for a whole batch).

Grey levels are indexed per job by present level (0 .. n_levels - 1, ascending), which is what
pyradiomics' deletion of empty grey levels leaves; per-job tables are padded to the batch's
largest level count ``L`` (``present`` marks the real entries, padded grey values are 1 so that
``1 / g**2`` stays finite where the count is 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from features.engine.geometry import RoiGeometry
from features.engine.levels import ANGLES
from features.errors import FeatureError

__all__ = ["Job", "Layout", "check_job", "n_levels"]

N_ANGLES = len(ANGLES)


@dataclass(frozen=True)
class Job:
    """One ROI in one filtered image, discretised: what firstorder and the texture classes need.

    ``values``: the image's ROI voxels (order of ``geometry.flat``); ``levels``: their grey levels
    (pyradiomics' ``binImage``, 1..Ng); ``spacing`` (x, y, z) in mm; ``voxel_array_shift`` as in
    :func:`features.engine.firstorder.firstorder_features`.
    """

    values: np.ndarray
    levels: np.ndarray
    geometry: RoiGeometry
    voxel_array_shift: float = 0
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


def check_job(job: Job, texture: bool) -> None:
    """The numba path's refusals (:mod:`features.engine.levels`), same messages and fixes."""
    if job.geometry.n_voxels == 0 or job.levels.size == 0:
        raise FeatureError("the ROI has no voxels, so no texture matrix can be computed",
                           fix="check that the mask holds the label inside the image")
    if job.levels.size != job.geometry.n_voxels or job.values.size != job.geometry.n_voxels:
        raise ValueError("a job's values and levels must hold one entry per ROI voxel")
    if not texture:
        return
    if not np.issubdtype(job.levels.dtype, np.integer):
        raise FeatureError(f"the discretised image has dtype {job.levels.dtype}, not integer grey "
                           "levels",
                           fix="discretise the image (binWidth/binCount) before texture features")
    low = int(job.levels.min())
    if low < 1:
        raise FeatureError(f"the discretised ROI has grey level {low}; levels start at 1",
                           fix="discretise the image with pyradiomics' binning (levels 1..Ng)")


def n_levels(job: Job) -> int:
    """How many grey levels the job's ROI holds (host side, for sizing the batches)."""
    return int(np.count_nonzero(np.bincount(np.asarray(job.levels, dtype=np.int64))))


class Layout:
    """A batch of jobs on ``device``: flat voxel tensors, padded grid, per-job level tables."""

    def __init__(self, jobs: list[Job], device: torch.device) -> None:
        self.device = device
        self.n_jobs = b = len(jobs)
        counts = np.array([j.geometry.n_voxels for j in jobs], dtype=np.int64)
        shapes = np.array([j.geometry.shape for j in jobs], dtype=np.int64).reshape(b, 3)
        grown = np.prod(shapes + 2, axis=1)
        self.max_extent = int(shapes.max())
        self.n_voxels = int(counts.sum())
        self.grid_size = int(grown.sum())

        def put(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

        self.counts = put(counts, torch.int64)
        self.start = put(np.concatenate([[0], np.cumsum(counts)[:-1]]), torch.int64)
        self.shapes = put(shapes, torch.int64)
        self.job = torch.repeat_interleave(torch.arange(b, device=device), self.counts)
        self.values = put(np.concatenate([np.asarray(j.values, dtype=np.float64).ravel()
                                          for j in jobs]), torch.float64)
        self.grey_levels = put(np.concatenate([np.asarray(j.levels).ravel() for j in jobs]),
                               torch.int64)
        flat = put(np.concatenate([j.geometry.flat for j in jobs]), torch.int64)
        base = put(np.concatenate([[0], np.cumsum(grown)[:-1]]), torch.int64)

        sh = self.shapes[self.job]
        ny, nx = sh[:, 1], sh[:, 2]
        z, rest = flat // (ny * nx), flat % (ny * nx)
        self.coords = torch.stack([z, rest // nx, rest % nx], dim=1)  # (N, 3) in the ROI box
        self.pos = base[self.job] + ((z + 1) * (ny + 2) + rest // nx + 1) * (nx + 2) + rest % nx + 1
        angles = torch.as_tensor(ANGLES, dtype=torch.int64, device=device)
        self.angles = angles
        gy, gx = self.shapes[:, 1:2] + 2, self.shapes[:, 2:3] + 2
        self.steps = (angles[None, :, 0] * gy + angles[None, :, 1]) * gx + angles[None, :, 2]
        self._compact()
        self.grid = torch.full((self.grid_size,), -1, dtype=torch.int64, device=device)
        self.grid[self.pos] = self.codes

    def _compact(self) -> None:
        """Per job: the grey levels present, each voxel's index among them, padded tables."""
        b, dev = self.n_jobs, self.device
        top = int(self.grey_levels.max())
        key = self.job * (top + 1) + self.grey_levels
        present = torch.zeros(b * (top + 1), dtype=torch.bool, device=dev)
        present[key] = True
        present = present.view(b, top + 1)
        rank = torch.cumsum(present, dim=1) - 1
        self.codes = rank.view(-1)[key]
        self.n_levels = present.sum(dim=1)
        self.L = max(int(self.n_levels.max()), 1)
        jb, g = present.nonzero(as_tuple=True)
        self.grey = torch.ones((b, self.L), dtype=torch.float64, device=dev)
        self.grey[jb, rank[jb, g]] = g.to(torch.float64)
        self.present = torch.arange(self.L, device=dev)[None, :] < self.n_levels[:, None]
        self.top = self.grey.gather(1, (self.n_levels - 1)[:, None])[:, 0]  # highest level, Ng
        self.max_top = top

    def per_job(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of ``x`` (per voxel, or per item of jobs ``index``) per job, shape (B,)."""
        index = self.job if index is None else index
        out = torch.zeros(self.n_jobs, dtype=x.dtype, device=self.device)
        return out.index_add_(0, index, x)

    def per_job_cols(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`per_job` of each column of ``x`` (N, K) in one call, shape (B, K)."""
        index = self.job if index is None else index
        out = torch.zeros((self.n_jobs, x.shape[1]), dtype=x.dtype, device=self.device)
        return out.index_add_(0, index, x)

    def per_job_of(self, columns: Sequence[torch.Tensor], index: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, ...]:
        """:meth:`per_job` of each of ``columns`` (each (N,)): one index_add, not K."""
        return self.per_job_cols(torch.stack(list(columns), dim=1), index).unbind(1)

    @cached_property
    def level_counts(self) -> torch.Tensor:
        """(B, L) float64: voxels of each level index (0 where padded)."""
        flat = torch.bincount(self.job * self.L + self.codes, minlength=self.n_jobs * self.L)
        return flat.view(self.n_jobs, self.L).to(torch.float64)

    @cached_property
    def voxel_steps(self) -> torch.Tensor:
        """(13, N): each voxel's flat step along each angle of :data:`ANGLES`."""
        return self.steps[self.job].T.contiguous()

    def neighbour_positions(self, sign: int) -> torch.Tensor:
        """(13, N) grid positions of each voxel's neighbour along ``sign`` times each angle."""
        return self.pos[None, :] + sign * self.voxel_steps

    @cached_property
    def forward(self) -> torch.Tensor:
        """(13, N) level index of each voxel's neighbour along each angle (-1 outside the ROI)."""
        return self.grid[self.neighbour_positions(1)]

    @cached_property
    def backward(self) -> torch.Tensor:
        """(13, N) level index of each voxel's neighbour against each angle (-1 outside)."""
        return self.grid[self.neighbour_positions(-1)]

    @cached_property
    def voxel_index(self) -> torch.Tensor:
        """The grid of voxel indices (-1 outside every ROI), for following neighbours."""
        out = torch.full((self.grid_size,), -1, dtype=torch.int64, device=self.device)
        out[self.pos] = torch.arange(self.n_voxels, device=self.device)
        return out

    @cached_property
    def same_forward(self) -> torch.Tensor:
        """(13, N) bool: the forward neighbour is in the ROI with the voxel's level."""
        return self.forward == self.codes[None, :]
