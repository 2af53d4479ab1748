"""``lightsaft`` command line: the tools a user runs by hand (stages run via dvc.yaml)."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_params


def _model_summary(args: argparse.Namespace) -> int:
    from .summary import model_summary

    print(model_summary(load_params(args.params)["model"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightsaft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("model-summary", help="parameter count and per-layer shapes of the model config")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_model_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
