"""``kfac-bench variants`` and ``kfac-bench presets``: what exists, one line each."""

from __future__ import annotations

import argparse


def add_variants_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run_variants(args: argparse.Namespace) -> int:
    import variants

    width = max(map(len, variants.names()))
    for name in variants.names():
        print(f"{name:<{width}}  {variants.get(name).summary}")
    return 0


def add_presets_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys",
        action="store_true",
        help="list every config key with its default and allowed values",
    )


def print_keys() -> None:
    """One line per config key: the key, its default and its domain (what values it allows)."""
    from typing import get_args

    from kfac_bench.config import (
        IDENTITY_FLAGS,
        RunConfig,
        flatten,
        leaf_domains,
        leaf_keys,
        to_dict,
    )
    from kfac_bench.domains import Identity, show

    defaults = flatten(to_dict(RunConfig(env="CartPole-v1")))
    width = max(map(len, defaults))
    for key, domain in leaf_domains().items():
        allowed = domain.describe() if domain is not None else "(unchecked)"
        if type(None) in get_args(leaf_keys()[key]):
            allowed += ", or null"
        if key in IDENTITY_FLAGS:
            flag = "" if isinstance(domain, Identity) else f", set with {IDENTITY_FLAGS[key]}"
            allowed += f"{flag} (it names the run: never --set)"
        default = "-" if key == "env" else show(defaults[key])
        print(f"{key:<{width}}  {default:<14} {allowed}")


def run_presets(args: argparse.Namespace) -> int:
    from kfac_bench.presets import FAMILY_DEFAULT_PRESET, PRESETS

    if args.keys:
        print_keys()
        return 0
    width = max(map(len, PRESETS))
    for name, preset in PRESETS.items():
        default_for = [family for family, p in FAMILY_DEFAULT_PRESET.items() if p == name]
        tag = f"  [default: {', '.join(default_for)}]" if default_for else ""
        print(f"{name:<{width}}  {preset.description}{tag}")
    return 0
