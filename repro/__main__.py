"""``python -m repro``: the ``repro`` command without an installed console script (e.g. a GPU box
where the project is on PYTHONPATH rather than pip-installed)."""

from repro.cli import main

if __name__ == "__main__":
    main()
