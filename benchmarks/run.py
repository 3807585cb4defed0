"""Run jaxreg's benchmark suite and print a table of side-by-side ratios.

Usage::

    python -m benchmarks.run [--quick] [--only CASE [CASE ...]] [--json OUT] [--jsonl ROWS]

Each case is a module ``benchmarks/bench_<case>.py`` exposing ``run(quick: bool)``, which returns
or yields its rows; each row (built with :func:`benchmarks.timing.row`) holds jaxreg's median
seconds, the reference implementation's median seconds measured in the same process, their
ratio and the target. ``--quick`` uses sizes that finish in about a minute on a 2-core CPU.
``--jsonl`` appends each row to a file as soon as its case yields it, so that a run stopped
part-way (``benchmarks/gpu.sh`` gives each case a time limit) keeps the rows it measured.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import pkgutil
import platform
import sys
from pathlib import Path
from typing import Any

import jax

import benchmarks


def available_cases() -> list[str]:
    """Names of the ``bench_<case>`` modules in this package, sorted."""
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(benchmarks.__path__)
        if m.name.startswith("bench_")
    )


def environment() -> dict[str, Any]:
    """Hardware, versions and date: recorded with every set of results."""
    import flax
    import optax

    devices = jax.devices()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "device": devices[0].device_kind,
        "device_count": len(devices),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table: one line per row, ratio = jaxreg / reference (lower is better)."""
    header = ("case", "config", "jaxreg s", "reference", "ref s", "ratio", "target")
    lines = [header]
    for r in rows:
        lines.append((
            r["case"], r["config"], f"{r['jaxreg_s']:.4g}", r["reference"],
            f"{r['reference_s']:.4g}", f"{r['ratio']:.3f}", r["target"],
        ))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
                     for line in lines)


def main(argv: list[str] | None = None) -> int:
    cases = available_cases()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (about a minute on 2 CPU cores)"
    )
    parser.add_argument("--only", nargs="+", choices=cases, metavar="CASE",
                        help=f"run only these cases (of: {', '.join(cases)})")
    parser.add_argument(
        "--json", type=Path, metavar="OUT", help="also write the results as JSON to OUT"
    )
    parser.add_argument("--jsonl", type=Path, metavar="ROWS",
                        help="append each row to ROWS as one JSON line as soon as it is measured")
    args = parser.parse_args(argv)

    env = environment()
    print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    rows: list[dict[str, Any]] = []
    for case in args.only or cases:
        module = importlib.import_module(f"benchmarks.bench_{case}")
        case_rows = []
        for r in module.run(quick=args.quick):
            case_rows.append(r)
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    f.write(json.dumps(r) + "\n")
        print(format_table(case_rows), flush=True)
        rows.extend(case_rows)
    if args.json:
        args.json.write_text(
            json.dumps({"environment": env, "quick": args.quick, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
