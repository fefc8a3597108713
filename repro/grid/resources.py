"""Where a grid invocation runs: device, parallel slots and threads, from the command's options.

The one place that turns ``--executor / --device / --workers / --runs-per-gpu / --gpus-per-task /
--array-parallelism`` into what the launcher and the dry run use, refusing combinations that
cannot work with one line each (:class:`ResourceError`).  Torch-free: whether CUDA is there is
asked of :func:`repro.grid.local.gpu_count`, which imports torch only on a machine with a driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from repro.config import DatasetSpec, RunSpec, in_channels
from repro.ensembles import DEFAULT_MAX_MEMBERS
from repro.grid import local


class ResourceError(ValueError):
    """Options that cannot run together; the message is the one line the CLI prints."""


@dataclass(frozen=True)
class Resources:
    """The device the runs use, how many run at once, and the GPUs SLURM gives each array task."""

    device: str
    slots: int
    remote: bool  # SLURM: the runs execute on compute nodes, not here
    gpus_per_task: int = 0
    local_cuda: int = 0  # CUDA devices visible here

    @property
    def threads(self) -> int:
        """CPU threads per worker: the machine's cores shared by the slots."""
        return max(1, local.cpu_count() // self.slots)

    @property
    def device_here(self) -> bool:
        """Can the runs' device be timed on this machine (no: a GPU grid from a login node)?"""
        return not (self.device.startswith("cuda") and not self.local_cuda)


def resolve(*, executor: str = "local", device: str | None = None, workers: int | None = None,
            runs_per_gpu: int = 1, max_members: int = DEFAULT_MAX_MEMBERS, gpus_per_task: int | None = None,
            array_parallelism: int = 16) -> Resources:
    """The :class:`Resources` of one invocation (``device=None``: cuda when a GPU is visible, else
    cpu; with SLURM the compute nodes' device, cuda unless ``gpus_per_task`` is 0)."""
    if executor not in ("local", "slurm"):
        raise ResourceError(f"--executor {executor!r} is invalid: allowed: local, slurm")
    if max_members < 1 or runs_per_gpu < 1 or (workers is not None and workers < 1) or array_parallelism < 1:
        raise ResourceError("--max-members, --runs-per-gpu, --workers and --array-parallelism must be >= 1")
    remote = executor == "slurm"
    if remote:
        device, gpus_per_task = _slurm_device(device, gpus_per_task, workers)
    visible = local.gpu_count()
    device = device or ("cuda" if visible else "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ResourceError(f"--device {device!r} is invalid: allowed: cpu, cuda")
    local_cuda = visible if device.startswith("cuda") else 0
    if remote:
        return Resources(device=device, slots=array_parallelism, remote=True, gpus_per_task=gpus_per_task or 0,
                         local_cuda=local_cuda)
    if device.startswith("cuda") and not local_cuda:
        raise ResourceError("--device cuda but no CUDA device is visible")
    slots = workers or (local_cuda * runs_per_gpu if device.startswith("cuda") else local.cpu_count())
    return Resources(device=device, slots=slots, remote=False, local_cuda=local_cuda)


def _slurm_device(device: str | None, gpus_per_task: int | None, workers: int | None) -> tuple[str, int]:
    """(device, GPUs per array task) for the SLURM executor.

    The runs execute on the compute nodes, so the launcher's own machine (a login node) may have
    no GPU: the device defaults to cuda (cpu with --gpus-per-task 0), never to what is here.
    """
    if workers is not None:
        raise ResourceError("--workers applies to --executor local; with slurm, --array-parallelism sets the "
                            "parallel tasks")
    if gpus_per_task is not None and gpus_per_task < 0:
        raise ResourceError(f"--gpus-per-task {gpus_per_task} is invalid: allowed: >= 0")
    device = device or ("cpu" if gpus_per_task == 0 else "cuda")
    if gpus_per_task is None:
        gpus_per_task = 1 if device.startswith("cuda") else 0
    if device.startswith("cuda") and gpus_per_task == 0:
        raise ResourceError("--device cuda with --gpus-per-task 0: the array tasks would have no GPU; allowed: >= 1")
    if device == "cpu" and gpus_per_task > 0:
        raise ResourceError(f"--device cpu with --gpus-per-task {gpus_per_task}: the GPUs would sit idle; use 0 "
                            "(the default)")
    return device, gpus_per_task


# --- memory: does the largest dataset fit this machine? -------------------------------------

#: Bytes per array element as a unit holds its data (float32 inputs and targets).
_FLOAT32 = 4


def dataset_bytes(data: DatasetSpec, arrays: int) -> int:
    """What one dataset takes in memory while a unit trains on it: every split (train, val, test)
    as ``arrays`` float32 arrays of n x n per sample (the network's input channels plus the target)."""
    return (data.n_train + data.n_val + data.n_test) * arrays * data.resolution ** 2 * _FLOAT32


def machine_memory_bytes() -> int:
    """The memory this process may use: the machine's physical memory, or its cgroup's limit
    (a container, a SLURM allocation) where that is lower; 0 where the OS does not say."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        total = 0
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max": no limit
            total = min(total, int(text)) if total else int(text)
        break
    return total


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def memory_problem(specs: Iterable[RunSpec], *, slots: int, remote: bool, device: str = "cpu",
                   available: int | None = None) -> tuple[str, bool] | None:
    """``(message, fatal)`` when the largest dataset of ``specs`` (the runs still to do) does not
    fit this machine's memory (fatal for local runs: the unit would die allocating it, after its
    dataset was generated), or when ``slots`` CPU workers holding one each might not (a warning);
    None when it fits.  SLURM runs (``remote``) train on compute nodes of unknown memory: a
    warning only."""
    available = machine_memory_bytes() if available is None else available
    arrays: dict[DatasetSpec, int] = {}  # per sample: the input channels (most over its layouts) + target
    for spec in specs:
        arrays[spec.data] = max(arrays.get(spec.data, 0), in_channels(spec.data.pde, spec.layout) + 1)
    if not arrays or available <= 0:
        return None
    data = max(arrays, key=lambda d: dataset_bytes(d, arrays[d]))
    need = dataset_bytes(data, arrays[data])
    what = (f"the dataset {data.label} at resolution {data.resolution} ({data.n_train:,} + {data.n_val:,} + "
            f"{data.n_test:,} samples x {arrays[data]} float32 arrays of "
            f"{data.resolution}x{data.resolution}) needs at least {_gb(need)} in memory")
    if need > available:
        where = "the compute nodes must have more" if remote else "lower the resolution or the split sizes"
        return f"{what}; this machine has {_gb(available)}: {where}", not remote
    if not remote and device == "cpu" and slots > 1 and slots * need > available:
        return (f"{what}; {slots} workers holding one each need {_gb(slots * need)} of this machine's "
                f"{_gb(available)}: fewer --workers may be needed"), False
    return None
