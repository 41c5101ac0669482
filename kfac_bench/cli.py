"""`kfac-bench` command line. Each subcommand lives in its own module, imported lazily.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``. User errors
(bad config, unknown env/variant/preset, bad spec) print one line ``kfac-bench: error: ...`` and
exit 2; nothing is written. Environment and file-system failures (read-only or full disk,
``--out`` under a file) print ``kfac-bench: error: cannot write <file>: <reason>`` and exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from kfac_bench.config import ConfigError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("kfac_bench.commands.train", "train one run (resumes an unfinished run directory)"),
    "play": ("kfac_bench.commands.play", "evaluate a saved policy; optionally write a GIF"),
    "variants": ("kfac_bench.commands.listing", "list the factor-statistic variants"),
    "presets": ("kfac_bench.commands.listing", "list the presets (and --keys: config keys)"),
    "sweep": ("kfac_bench.sweep", "run a sweep spec (variant × env × seed × axes)"),
    "analyze": ("analysis.cli", "aggregate a sweep into tables, figures and a report"),
    "fidelity": ("kfac_bench.fidelity", "compare each variant with the exact Fisher"),
}


class UserError(Exception):
    """Raised by subcommands for bad input; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kfac-bench",
        description="Benchmark K-FAC factor-statistic variants inside one ACKTR trainer.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name in sys.argv[1:2] or len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
            module = importlib.import_module(module_name)
            subparser = sub.add_parser(name, help=help_text, description=help_text)
            add = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
            add(subparser)
            subparser.set_defaults(_run=getattr(module, f"run_{name}", None) or module.run)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def os_error_line(error: OSError) -> str:
    """``cannot write runs/x/config.json: read-only file system`` (environment failures)."""
    reason = (error.strerror or type(error).__name__).lower()
    if error.filename is None:
        return f"{reason} ({_first_line(error)})" if error.strerror else _first_line(error)
    action = getattr(error, "action", "access")
    return f"cannot {action} {error.filename}: {reason}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args()
    try:
        # syrk.KERNEL_ENV, read here without importing torch: a bad value is refused up front
        if os.environ.get("KFAC_BENCH_SYRK"):
            from kfac_bench.curvature import syrk

            syrk.preferred()
        return int(args._run(args) or 0)
    except (UserError, ConfigError, ValueError) as error:
        print(f"kfac-bench: error: {_first_line(error)}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        if error.filename is not None:
            print(f"kfac-bench: error: {os_error_line(error)}", file=sys.stderr)
            return 1
        print(f"kfac-bench: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"kfac-bench: error: {os_error_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kfac-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
