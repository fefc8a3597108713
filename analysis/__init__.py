"""analysis: read runs from MLflow, fit scaling laws, compute transfer metrics, decide the
paper's claims, render the report.  Never imports torch or the training engine.
"""

import os as _os
import sys as _sys


def limit_blas_threads() -> bool:
    """Ask OpenBLAS for one thread, if numpy is not imported yet; return whether it applied.

    The fits run thousands of tiny L-BFGS-B iterations; a multi-threaded BLAS spends far more
    time synchronising threads than computing on 3-vectors (measured 100x slower on a busy
    2-core machine).  The CLI calls this before anything imports numpy;
    :func:`analysis.fits.single_thread_blas` does the same in-process via threadpoolctl.
    Importing the package changes nothing, so other code in the same process keeps its threads.
    """
    if "numpy" in _sys.modules:
        return False
    _os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    return True
