"""The ``sld`` console script: one subcommand per stage module (``sld segment`` == ``python -m stages.segment``).

Every stage module exposes ``main(argv)``; ``run_stage`` is the shared argv handling they use:
``--config FILE`` plus any number of dotted ``key.sub=value`` overrides. ``print_summary`` prints
the ``summary_lines()`` of a library call's result (a trained run, a segmented corpus).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sld.config import load_config
from sld.errors import UserError

T = TypeVar("T")
R = TypeVar("R")

# subcommand -> module under stages/
SUBCOMMANDS: dict[str, str] = {
    "segment": "segment",
    "train-autoencoder": "train_autoencoder",
    "train-diffusion": "train_diffusion",
    "generate": "generate",
    "train-baseline": "train_baseline",
    "evaluate": "evaluate",
    "autoencoder-report": "autoencoder_report",
    "benchmark": "benchmark",
    "visualize": "visualize",
    "synthetic": "synthetic",
    "quickstart": "quickstart",
    "export-lm": "export_lm",
}


def available_subcommands() -> dict[str, str]:
    """Subcommands whose stage module is present in this installation."""
    found = {}
    for name, module in SUBCOMMANDS.items():
        if importlib.util.find_spec(f"stages.{module}") is not None:
            found[name] = module
    return found


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", "-c", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=2e-4 output_dir=runs/x")
    return parser


def print_summary(result: R) -> R:
    """Print ``result.summary_lines()`` one per line (what a stage shows at the end); return ``result``."""
    for line in result.summary_lines():  # type: ignore[attr-defined]
        print(line)
    return result


def run_stage(
    config_cls: type[T],
    run: Callable[[T], Any],
    argv: Sequence[str] | None,
    description: str,
    parser: argparse.ArgumentParser | None = None,
) -> int:
    """Parse ``--config`` and overrides, build the typed config and call ``run``.

    User errors (``UserError``: bad keys, bad input lines, missing files) print one line and return 2.
    """
    parser = parser or stage_parser(description)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
        from sld.backends import configure_attention, configure_memory_share  # import torch: only here

        configure_attention()
        configure_memory_share()
        run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = available_subcommands()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sld <command> [--config FILE] [key.sub=value ...]\n\ncommands:")
        for name, module in commands.items():
            doc = (importlib.import_module(f"stages.{module}").__doc__ or "").strip().splitlines()
            print(f"  {name:<20} {doc[0] if doc else ''}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in commands:
        print(f"error: unknown command '{command}'; choose from: {', '.join(commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"stages.{commands[command]}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
