"""repro.threads: the one thread limiter (BLAS via threadpoolctl, torch's intra-op pool)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np  # noqa: F401 - loads OpenBLAS, so threadpoolctl has a pool to limit
import torch
from threadpoolctl import threadpool_info

from repro.threads import limit_before_import, limited_threads, thread_env


def _blas_threads() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_limited_threads_limits_both_pools_and_restores_them() -> None:
    torch_before, blas_before = torch.get_num_threads(), _blas_threads()
    assert blas_before  # numpy's OpenBLAS is loaded
    with limited_threads(1):
        assert torch.get_num_threads() == 1 and set(_blas_threads()) == {1}
        with limited_threads(1):  # nested: free, and still in force after the inner block
            pass
        assert torch.get_num_threads() == 1 and set(_blas_threads()) == {1}
    assert torch.get_num_threads() == torch_before and _blas_threads() == blas_before
    with limited_threads(None):  # None: nothing changes
        assert torch.get_num_threads() == torch_before


def test_environment_caps_a_new_process_before_its_pools_exist() -> None:
    assert thread_env(3) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3"}
    assert limit_before_import(1) is False  # numpy is loaded here: too late, and it says so
    code = ("from repro.threads import limit_before_import; import os; ok = limit_before_import(1); "
            "import numpy; from threadpoolctl import threadpool_info; "
            "print(ok, os.environ['OPENBLAS_NUM_THREADS'], "
            "{p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'})")
    env = {k: v for k, v in __import__("os").environ.items() if k not in thread_env(1)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "1", "{1}"]
