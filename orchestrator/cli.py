"""The ``flowtide`` command line: one subcommand per module in ``orchestrator.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

from orchestrator.config import ConfigError

# Subcommand -> module in orchestrator.commands exposing ``register(subparsers)``;
# each module imports its heavy dependencies (ray, torch) only when it runs.
COMMANDS = ("up", "status", "simulate", "profile", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowtide", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"orchestrator.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"orchestrator.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ConfigError as exc:
        print(f"flowtide: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
