"""Execute notebooks/time_to_dispatch.ipynb in place, so it is stored with fresh outputs.

Usage: python scripts/run_notebook.py [--timeout 600]

Runs every cell top to bottom with its default parameters (1,000 simulated rows) in a
Jupyter kernel (nbclient, ipykernel; notebooks/requirements_nb.txt or the test environment),
with matplotlib's non-interactive backend, and writes the notebook back with its outputs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbclient
import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "time_to_dispatch.ipynb"


def main() -> int:
    """Execute the notebook and save it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    args = parser.parse_args()
    os.environ["MPLBACKEND"] = "Agg"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=args.timeout, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    nbformat.write(notebook, NOTEBOOK)
    print(f"executed and saved {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
