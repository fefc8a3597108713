"""Where a grid invocation runs: device, parallel slots and threads, from the command's options.

The one place that turns ``--executor / --device / --workers / --runs-per-gpu / --gpus-per-task /
--array-parallelism`` into what the launcher and the dry run use, refusing combinations that
cannot work with one line each (:class:`ResourceError`).  Torch-free: whether CUDA is there is
asked of :func:`repro.grid.local.gpu_count`, which imports torch only on a machine with a driver.
"""

from __future__ import annotations

from dataclasses import dataclass

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
            runs_per_gpu: int = 1, max_members: int = 16, gpus_per_task: int | None = None,
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
