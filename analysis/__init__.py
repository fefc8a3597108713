"""analysis: read runs from MLflow, fit scaling laws, compute transfer metrics, decide the
paper's claims, render the report.  Never imports torch or the training engine.

Thread pools are limited through :mod:`repro.threads` (the CLI caps BLAS at one thread before
numpy loads; :func:`analysis.fits.single_thread_blas` does it in-process).
"""
