"""analysis: read runs from MLflow, fit scaling laws, compute transfer metrics, decide the
paper's claims, render the report.  Never imports torch or the training engine.
"""

import os as _os
import sys as _sys

# The fits run thousands of tiny L-BFGS-B iterations; a multi-threaded BLAS spends far more
# time synchronising its threads than computing on 3-vectors (measured 100x slower on a busy
# 2-core machine).  Only effective when numpy is not imported yet; see also
# analysis.fits.single_thread_blas for the in-process switch.
if "numpy" not in _sys.modules:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        _os.environ.setdefault(_var, "1")
