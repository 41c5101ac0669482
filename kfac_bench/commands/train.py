"""``kfac-bench train``: one run, with a progress bar; resumes an unfinished run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from kfac_bench.config import parse_cli_value
from kfac_bench.presets import FAMILY_DEFAULT_PRESET, PRESETS, build_config
from kfac_bench.rl.envs import env_family
from kfac_bench.store import run_name


def parse_sets(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = parse_cli_value(value)
    return overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "defaults: --variant paper; with no --preset the environment family's default "
        f"({', '.join(f'{k}: {v}' for k, v in FAMILY_DEFAULT_PRESET.items())}).\n"
        "example: kfac-bench train --env MinAtar/Breakout-v1 --variant baselines "
        "--set kfac.damping_mode=tikhonov"
    )
    parser.add_argument(
        "--env", required=True, help="Gymnasium id (CartPole-v1, MinAtar/Breakout-v1, ALE/Pong-v5)"
    )
    parser.add_argument(
        "--variant", default="paper", help="factor-statistic variant (see `kfac-bench variants`)"
    )
    parser.add_argument(
        "--preset",
        default=None,
        choices=list(PRESETS),
        metavar="NAME",
        help="hyperparameter preset (see `kfac-bench presets`)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps", type=int, default=None, help="env steps over all envs (default: preset's)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run directory (default runs/train/<label>__<env>__s<seed>)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set kfac.damping=0.03 (repeatable)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from kfac_bench.rl.envs import check_env_id

    overrides = parse_sets(args.sets)
    overrides.setdefault("device", args.device)
    check_env_id(args.env)
    config = build_config(
        args.env,
        variant=args.variant,
        seed=args.seed,
        preset=args.preset,
        total_steps=args.steps,
        overrides=overrides,
    )
    out = args.out or Path("runs/train") / run_name(config.label, config.env, config.seed)
    from kfac_bench.rl.trainer import train

    print(
        f"{config.label} on {config.env} (family {env_family(config.env)}, preset {config.preset}, "
        f"seed {config.seed}) -> {out}"
    )
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=config.total_steps, unit="step", unit_scale=True, dynamic_ncols=True)

    def on_progress(p) -> None:
        bar.n = min(p.steps, p.total_steps)
        bar.set_postfix_str(
            f"fps {p.fps:,.0f} | return(20) {p.recent_return:.1f} | episodes {p.episodes}",
            refresh=False,
        )
        bar.update(0)

    try:
        result = train(config, out, on_progress=on_progress if bar else None)
    finally:
        if bar is not None:
            bar.close()
    if result.state.startswith("already-"):
        print(
            f"{out}: run already finished ({result.state[8:]}, {result.steps} steps); nothing to do"
        )
        return 0
    if result.state == "diverged":
        print(f"{out}: diverged after {result.steps} steps: {result.error}")
        return 1
    print(f"{out}: done, {result.steps} steps")
    return 0
