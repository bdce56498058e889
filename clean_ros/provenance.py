"""Which source a result came from: the git commit of the checkout (bundles, compression reports, benchmarks)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from clean_ros.package_share import SOURCE_ROOT


def git_commit(root: str | Path = SOURCE_ROOT, short: bool = False, timeout_s: float = 10.0) -> str | None:
    """HEAD of the git checkout at `root` (abbreviated when `short`), with "-dirty" when tracked files have
    uncommitted changes; None outside a checkout or without git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=timeout_s,
                              check=False)

    try:
        head = git("rev-parse", *(["--short"] if short else []), "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    if head.returncode != 0 or not commit:
        return None
    return commit + ("-dirty" if dirty.stdout.strip() else "")


__all__ = ["git_commit"]
