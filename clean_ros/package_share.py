"""Files that ship with the clean_ros package (config/, models/default, launch/): from the installed package share
(colcon install, found through the ament index) when it is there, else from the source tree.

The launch file imports this module too, so it imports nothing beyond the standard library (and the ament index,
when present)."""
from __future__ import annotations

from pathlib import Path

import clean_ros

PACKAGE = "clean_ros"
# the checkout (or site-packages, when installed) that holds the clean_ros package folder
SOURCE_ROOT = Path(clean_ros.__file__).resolve().parents[1]


def installed_share(package: str = PACKAGE) -> Path | None:
    """The package's share folder from the ament index; None when it is not installed through ament."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(package))
    except Exception:  # noqa: BLE001 - no ament index, or the package is not in it (e.g. a venv without AMENT_PREFIX_PATH)
        return None


def package_path(relative: str = "", must_contain: str | None = None) -> Path:
    """`relative` (a file or folder; "" = the package root) inside the installed share when it exists there (and,
    for a folder, holds `must_contain`), else inside the source tree."""
    share = installed_share()
    if share is not None:
        candidate = share / relative
        if (candidate / must_contain if must_contain else candidate).exists():
            return candidate
    return SOURCE_ROOT / relative


def default_bundle_path() -> Path:
    """The embedded default model bundle, models/default (the node's default bundle_path)."""
    return package_path("models/default", must_contain="manifest.json")


__all__ = ["PACKAGE", "SOURCE_ROOT", "installed_share", "package_path", "default_bundle_path"]
