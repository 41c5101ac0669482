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
        "--keys", action="store_true", help="list every config key with its type and default"
    )


def run_presets(args: argparse.Namespace) -> int:
    from kfac_bench.presets import FAMILY_DEFAULT_PRESET, PRESETS

    if args.keys:
        from kfac_bench.config import RunConfig, flatten, leaf_keys, to_dict

        defaults = flatten(to_dict(RunConfig(env="CartPole-v1")))
        for key, tp in leaf_keys().items():
            print(f"{key:<32} {defaults.get(key)!r:<14} {getattr(tp, '__name__', tp)}")
        return 0
    width = max(map(len, PRESETS))
    for name, preset in PRESETS.items():
        default_for = [family for family, p in FAMILY_DEFAULT_PRESET.items() if p == name]
        tag = f"  [default: {', '.join(default_for)}]" if default_for else ""
        print(f"{name:<{width}}  {preset.description}{tag}")
    return 0
