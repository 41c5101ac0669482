"""``kfac-bench play RUN_DIR``: evaluate a saved policy on raw full-game scores; optional GIF.

The checkpoint is loaded with ``torch.load(weights_only=True)`` (no arbitrary pickle). Evaluation
uses the training protocol without its training-only parts (no reward clipping, no episodic life)
and samples actions from the policy (``--greedy`` takes the arg-max instead).
"""

from __future__ import annotations

import argparse
import errno
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory holding checkpoint.pt")
    parser.add_argument("--episodes", type=int, default=5, help="episodes to play (default 5)")
    parser.add_argument("--gif", type=Path, default=None, help="write the first episode as a GIF")
    parser.add_argument("--greedy", action="store_true", help="arg-max actions instead of sampling")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument(
        "--max-steps", type=int, default=27_000, help="cap per episode (agent steps)"
    )
    parser.add_argument("--fps", type=int, default=30, help="GIF frame rate")


def headless_mujoco_default() -> None:
    """MuJoCo renders through GLFW unless ``MUJOCO_GL`` says otherwise, and GLFW needs a display:
    without one (and without a choice made by the user) render offscreen with EGL."""
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"


def run(args: argparse.Namespace) -> int:
    from kfac_bench import store
    from kfac_bench.config import from_dict
    from kfac_bench.rl.envs import make_env
    from kfac_bench.rl.normalize import ObservationNormalizer
    from kfac_bench.rl.policies import build_policy, separate_critic_for

    checkpoint_path = args.run_dir / "checkpoint.pt"
    if not checkpoint_path.exists():
        raise FileNotFoundError(f"no checkpoint.pt in {args.run_dir}")
    if args.episodes < 1:
        raise ValueError("--episodes must be at least 1")
    if args.gif is not None:
        check_writable(args.gif)  # before anything is played
    state = store.load_checkpoint(checkpoint_path)
    try:
        config = from_dict(state["config"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{checkpoint_path} is not a kfac-bench checkpoint ({error})") from error

    torch.manual_seed(args.seed)
    if args.gif is not None:
        headless_mujoco_default()
    env = make_env(config.env, 1, training=False, atari=config.atari, render=args.gif is not None)
    policy = build_policy(
        env.obs_shape,
        env.num_actions,
        config.policy,
        separate_critic=separate_critic_for(config),
        continuous=env.continuous,
    )
    policy.load_state_dict(state["policy"])
    policy.eval()
    obs_norm = None
    if state.get("obs_norm") is not None:  # the training run's statistics, frozen
        obs_norm = ObservationNormalizer(env.obs_shape, config.normalize.obs_clip)
        obs_norm.load_state_dict(state["obs_norm"])

    def seen(raw: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(raw if obs_norm is None else obs_norm.normalize(raw))

    frames: list[np.ndarray] = []
    returns = []
    obs = env.reset(seed=args.seed)
    for episode in range(args.episodes):
        for _ in range(args.max_steps):
            if args.gif is not None and episode == 0:
                frames.append(env.render())
            with torch.no_grad():
                head, _ = policy(seen(obs))
                dist = policy.distribution(head)
                action = dist.mode() if args.greedy else dist.sample()
            step = env.step(action.numpy())
            obs = step.obs
            if step.finished:
                returns.append(step.finished[0].ret)
                print(
                    f"episode {episode + 1}: return {step.finished[0].ret:g}, "
                    f"length {step.finished[0].length}"
                )
                break
        else:
            print(f"episode {episode + 1}: stopped at --max-steps {args.max_steps} (not finished)")
    env.close()
    if returns:
        print(
            f"mean return over {len(returns)} episodes: {np.mean(returns):.2f} "
            f"(± {np.std(returns):.2f}), policy at {state['steps']} steps"
        )
    if args.gif is not None and frames:
        write_gif(frames, args.gif, args.fps)
        print(f"wrote {args.gif} ({len(frames)} frames)")
    return 0


def check_writable(path: Path) -> None:
    """Raise the OSError that writing ``path`` would meet, before any work is done.

    Refused: an existing directory, a parent that is a file, a directory that takes no new file
    (read-only, no permission). Missing parents are fine (the write creates them). The error
    names ``path`` and ``write``, so the command line prints ``cannot write <path>: <reason>``.
    Creates nothing: the probe file is removed at once."""
    from kfac_bench.store import naming

    path = Path(path)
    if path.is_dir():
        raise naming(IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)), path, "write")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise naming(NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)), path, "write")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise naming(error, path, "write") from None
    os.close(fd)
    os.unlink(probe)


def write_gif(frames: list[np.ndarray], path: Path, fps: int) -> None:
    """Animated GIF via Pillow, written atomically."""
    import io

    from PIL import Image

    from kfac_bench.store import write_atomic

    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=int(1000 / fps),
        loop=0,
    )
    write_atomic(path, buffer.getvalue())
