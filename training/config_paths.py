"""Where the source tree keeps its model and training YAMLs (config/), and name -> file lookup.

Offline only (training, benchmarks, tests): the runtime never reads config/, it loads bundles.
"""
from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def find_config(name: str) -> Path:
    """'pointpillars_tiny' or a path -> the YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name}.yaml"
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"config {name!r} not found (looked for {path} and {candidate})")


__all__ = ["CONFIG_DIR", "find_config"]
