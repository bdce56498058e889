"""`torchrun ... training/compress.py`: the process group of a compression run, and the check that every rank runs
the same thing.

Without torchrun's environment (WORLD_SIZE unset or 1) this is one process and nothing is initialised. Under
torchrun each rank joins the group (gloo on CPU, nccl on CUDA, training.distributed), then the ranks compare a
fingerprint of their resolved config and source tree: ranks started from different checkouts or with different
`--set` values would train different models into one run folder, so they all stop at once with one line that says
which rank differs in what.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from clean_ros.provenance import git_commit
from clean_ros.yaml_config import dump_yaml
from training.distributed import DistContext, init_distributed

REPO = Path(__file__).resolve().parents[2]


class RanksDisagree(Exception):
    """The ranks of one torchrun job were started with different configs or source trees."""


def source_fingerprint(root: Path = REPO) -> str:
    """The checkout's commit plus a digest of its uncommitted changes to tracked files ("" outside git)."""
    commit = git_commit(root) or ""
    try:
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=root, capture_output=True, timeout=30,
                              check=False).stdout
    except (OSError, subprocess.SubprocessError):
        diff = b""
    return f"{commit}:{hashlib.sha256(diff).hexdigest()[:12]}" if diff else commit


def rank_fingerprint(cfg) -> dict[str, str]:
    """What must agree between ranks; paths inside the checkout count relative to it (machines may differ)."""
    text = dump_yaml(cfg).replace(str(REPO), "<repo>")
    return {"config": hashlib.sha256(text.encode()).hexdigest()[:16], "source": source_fingerprint()}


def start_ranks(cfg, device: str) -> DistContext:
    """Join torchrun's process group (if any) and check that every rank has rank 0's config and source."""
    import torch

    from clean_ros.yaml_config import ConfigError

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device={device}: no CUDA device available (use auto or cpu)")
    ctx = init_distributed(device)
    if not ctx.distributed:
        return ctx
    mine = rank_fingerprint(cfg)
    everyone = ctx.all_gather_object(mine)
    for rank, theirs in enumerate(everyone):
        for what in ("config", "source"):
            if theirs[what] != everyone[0][what]:
                label = "resolved config (--config / --set)" if what == "config" else "source tree (commit or " \
                                                                                     "uncommitted changes)"
                raise RanksDisagree(f"torchrun rank {rank} has another {label} than rank 0 ({theirs[what]} vs "
                                    f"{everyone[0][what]}): start every rank from the same checkout with the same "
                                    f"arguments")
    return ctx


__all__ = ["RanksDisagree", "rank_fingerprint", "source_fingerprint", "start_ranks"]
