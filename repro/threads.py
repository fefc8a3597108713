"""The one place thread counts are limited: the BLAS pools (OpenBLAS, MKL) and torch's intra-op pool.

Two moments, because a thread pool can only be sized from outside before it exists:

- before a process loads numpy or torch: environment variables (:func:`thread_env` for a grid
  worker's environment, :func:`limit_before_import` for the analysis CLI);
- in a running process: :func:`limited_threads`, which restores what it found (used by the
  fits, the calibration and the benchmarks).

Why limit at all: a grid worker shares the machine's cores with its siblings (oversubscription
costs more than it gains), and the fits solve thousands of 3-vector problems where a
multi-threaded BLAS spends far more time synchronising than computing (measured 100x slower on a
busy 2-core machine).  Torch-free: torch's pool is touched only when torch is already imported.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

__all__ = ["ENV_VARS", "limit_before_import", "limited_threads", "thread_env"]

#: The variables the OpenMP runtime (torch's intra-op pool), MKL and OpenBLAS read at load time.
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: The limits entered in this process, innermost last: (n, whether torch was loaded then).  Not
#: thread-safe: entered from one thread (a worker's main loop, the fits, the calibration).
_active: list[tuple[int, bool]] = []


def thread_env(n: int) -> dict[str, str]:
    """Environment that caps a process started with it at ``n`` threads per pool."""
    return {name: str(n) for name in ENV_VARS}


def limit_before_import(n: int) -> bool:
    """Cap this process's pools at ``n`` threads if numpy is not imported yet; return whether it
    applied.  A value the user set in the environment wins."""
    if "numpy" in sys.modules:
        return False
    for name in ENV_VARS:
        os.environ.setdefault(name, str(n))
    return True


@contextlib.contextmanager
def limited_threads(n: int | None) -> Iterator[None]:
    """Within the block, BLAS (via threadpoolctl, when installed) and torch (when imported) use
    ``n`` threads; both are restored after.  ``None`` changes nothing; re-entering the limit already
    in force is free (the fits nest it per curve)."""
    torch = sys.modules.get("torch")
    key = (n, torch is not None)
    if n is None or (_active and _active[-1] == key):
        yield
        return
    before = torch.get_num_threads() if torch is not None else None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional dependency
        blas: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    else:
        blas = threadpool_limits(limits=n, user_api="blas")
    _active.append(key)
    try:
        with blas:
            if torch is not None:
                torch.set_num_threads(n)
            yield
    finally:
        _active.pop()
        if torch is not None:
            torch.set_num_threads(before)
