"""Peer check: Stable-Baselines3 A2C / PPO with rl-zoo settings, logged like a kfac-bench run.

Run it in a side environment, never the project's (SB3 is not a dependency of kfac-bench)::

    python3 -m venv /tmp/sb3env
    /tmp/sb3env/bin/pip install torch==2.13.0            # the CPU wheel first
    /tmp/sb3env/bin/pip install --no-deps "stable-baselines3==2.9.*"
    /tmp/sb3env/bin/pip install "gymnasium==1.4.*" numpy cloudpickle pandas matplotlib
    /tmp/sb3env/bin/python scripts/peer_sb3.py --out runs/peers --seeds 5 --steps 100000

Each run writes ``<out>/sb3-<algo>__<env>__s<seed>/episodes.csv`` (step, wall_time, return,
length; raw Monitor returns) so ``scripts/compare_controls.py`` reads both sides the same way.
Hyperparameters: DLR-RM/rl-baselines3-zoo ``hyperparams/a2c.yml`` and ``hyperparams/ppo.yml``
(CartPole-v1, Acrobot-v1; Acrobot's ``normalize: true`` is VecNormalize on observations and
rewards, kept here because it is the zoo setting).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize


def linear(start: float):
    return lambda progress_remaining: progress_remaining * start


ZOO = {
    ("a2c", "CartPole-v1"): {"n_envs": 8, "kwargs": {"ent_coef": 0.0}, "normalize": False},
    ("a2c", "Acrobot-v1"): {"n_envs": 16, "kwargs": {"ent_coef": 0.0}, "normalize": True},
    ("ppo", "CartPole-v1"): {
        "n_envs": 8,
        "kwargs": {
            "n_steps": 32,
            "batch_size": 256,
            "gae_lambda": 0.8,
            "gamma": 0.98,
            "n_epochs": 20,
            "ent_coef": 0.0,
            "learning_rate": linear(1e-3),
            "clip_range": linear(0.2),
        },
        "normalize": False,
    },
    ("ppo", "Acrobot-v1"): {
        "n_envs": 16,
        "kwargs": {
            "n_steps": 256,
            "gae_lambda": 0.94,
            "gamma": 0.99,
            "n_epochs": 4,
            "ent_coef": 0.0,
        },
        "normalize": True,
    },
}


class EpisodeLog(BaseCallback):
    """One CSV row per finished episode, at the global env step it finished."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.start = time.perf_counter()
        self.handle = path.open("w", newline="")
        self.writer = csv.writer(self.handle)
        self.writer.writerow(["step", "wall_time", "return", "length"])

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:
                ep = info["episode"]
                wall = round(time.perf_counter() - self.start, 3)
                self.writer.writerow([self.num_timesteps, wall, ep["r"], ep["l"]])
        return True

    def _on_training_end(self) -> None:
        self.handle.close()


def run(algo: str, env_id: str, seed: int, steps: int, out: Path) -> None:
    setting = ZOO[(algo, env_id)]
    env = make_vec_env(env_id, n_envs=setting["n_envs"], seed=seed)
    if setting["normalize"]:
        env = VecNormalize(env, gamma=setting["kwargs"].get("gamma", 0.99))
    cls = A2C if algo == "a2c" else PPO
    model = cls("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **setting["kwargs"])
    run_dir = out / f"sb3-{algo}__{env_id}__s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    model.learn(total_timesteps=steps, callback=EpisodeLog(run_dir / "episodes.csv"))
    print(f"{run_dir}: done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/peers"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--algos", nargs="+", default=["a2c", "ppo"])
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Acrobot-v1"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # as kfac-bench's classic-control runs (torch_threads = 1)
    for env_id in args.envs:
        for algo in args.algos:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                run(algo, env_id, seed, args.steps, args.out)


if __name__ == "__main__":
    main()
