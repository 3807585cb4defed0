"""Execute the notebooks top to bottom with nbclient; fail naming the notebook and cell.

Usage (from anywhere)::

    python notebooks/execute.py [--inplace] [--timeout SECONDS] [NAMES...]

NAMES are notebook file names, stems or unique stem prefixes in this directory
(``01_batch_scaled_regularization``, ``02_batch_normalization.ipynb``, ``03``, ...); default:
every ``*.ipynb`` here, in name order. Without
``--inplace`` the executed copies are written to a temporary directory (printed), leaving the
committed notebooks untouched; with ``--inplace`` the outputs are written back into them.

Each notebook runs in a fresh ``python3`` kernel with this directory as its working directory
and ``--timeout`` seconds allowed per cell. The exit status is 0 when every notebook ran
without error, else 1, after printing which notebook and which cell (index, first source line
and the error) failed. Wall-clock times are printed per notebook and in total.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

HERE = Path(__file__).resolve().parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in IPython tracebacks


def find_notebooks(names: list[str]) -> list[Path]:
    """The notebooks named (stem or file name), or all of them, in name order."""
    if not names:
        return sorted(HERE.glob("*.ipynb"))
    paths = []
    for name in names:
        path = HERE / (name if name.endswith(".ipynb") else f"{name}.ipynb")
        if not path.exists():
            path = Path(name).resolve()
        if not path.exists():  # a unique prefix, e.g. "01"
            matches = sorted(HERE.glob(f"{name}*.ipynb"))
            path = matches[0] if len(matches) == 1 else path
        if not path.exists():
            known = ", ".join(p.stem for p in sorted(HERE.glob("*.ipynb")))
            raise SystemExit(f"execute.py: no notebook {name!r} (known: {known})")
        paths.append(path)
    return paths


def failing_cell(nb: nbformat.NotebookNode) -> tuple[int, str] | None:
    """(index, first source line) of the first code cell whose outputs hold an error."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(
            o.get("output_type") == "error" for o in cell.get("outputs", [])
        ):
            return index, (cell.source.strip().splitlines() or [""])[0]
    return None


def execute(path: Path, out_path: Path, timeout: int, kernel: str) -> tuple[bool, float, str]:
    """Runs one notebook, writes it (with outputs, even partial ones) to ``out_path``.

    Returns ``(ok, seconds, message)``."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    ok, message = True, ""
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
        ok = False
        where = failing_cell(nb)
        cell = f"cell {where[0]} ({where[1]!r})" if where else "a cell"
        kind = "timed out" if isinstance(err, CellTimeoutError) else "failed"
        lines = [line for line in ANSI.sub("", str(err)).strip().splitlines() if line.strip()]
        message = f"{path.name}: {cell} {kind}: {lines[-1] if lines else type(err).__name__}"
    seconds = time.perf_counter() - start
    nbformat.write(nb, out_path)
    return ok, seconds, message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument(
        "--inplace", action="store_true", help="write the outputs back into the notebooks"
    )
    parser.add_argument(
        "--timeout", type=int, default=600, help="seconds allowed per cell (default 600)"
    )
    parser.add_argument("--kernel", default="python3", help="jupyter kernel name (default python3)")
    args = parser.parse_args(argv)

    paths = find_notebooks(args.names)
    out_dir = None if args.inplace else Path(tempfile.mkdtemp(prefix="jaxreg-notebooks-"))
    failures, total = [], 0.0
    for path in paths:
        out_path = path if out_dir is None else out_dir / path.name
        ok, seconds, message = execute(path, out_path, args.timeout, args.kernel)
        total += seconds
        print(f"{'ok  ' if ok else 'FAIL'} {path.name}: {seconds:.1f} s -> {out_path}", flush=True)
        if not ok:
            failures.append(message)
    print(f"{len(paths)} notebook(s), {total:.1f} s in total")
    for message in failures:
        print(f"ERROR {message}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
