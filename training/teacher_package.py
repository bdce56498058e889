"""A trained two-stage teacher as a folder that loads without executing code (the shipped one: models/teacher/).

    TEACHER/
      manifest.json        format, schema_version, params, provenance (command, data, commit), metrics, sha256 of
                           every other file
      teacher.yaml         the TwoStageConfig (RPN + RoI head)
      weights.safetensors  the state_dict (safetensors: a flat tensor table)
      README.md            the same facts for people

`compress.py` loads one with `teacher.checkpoint: models/teacher` (the default); `load_teacher_package` checks
the manifest and every file's sha256 first, then builds the detector from teacher.yaml and loads the weights
strictly. Every problem is a TeacherPackageError naming the folder and what is wrong.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from clean_ros.inference.bundle import BundleError, read_folder_manifest, replace_dir, sha256_file, verify_files
from clean_ros.yaml_config import ConfigError, load_config, save_yaml

FORMAT = "clean_ros.teacher"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
CONFIG_NAME = "teacher.yaml"
WEIGHTS_NAME = "weights.safetensors"


class TeacherPackageError(ValueError):
    """A teacher folder that is missing, incomplete, tampered with or does not fit its config."""


def is_teacher_package(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def save_teacher_package(out: str | Path, model: torch.nn.Module, cfg, provenance: Mapping[str, Any],
                         metrics: Mapping[str, Any] | None = None, readme: str = "") -> Path:
    """Write the folder under a temporary name beside `out`, then rename it into place (never half a teacher)."""
    from safetensors.torch import save_file

    from clean_ros.models.flops import count_parameters

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_NAME))
        save_yaml(cfg, tmp / CONFIG_NAME)
        if readme:
            (tmp / "README.md").write_text(readme)
        files = {name: {"sha256": sha256_file(tmp / name)} for name in (CONFIG_NAME, WEIGHTS_NAME)}
        manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "name": getattr(cfg, "name", "teacher"),
                    "params": count_parameters(model), "provenance": dict(provenance),
                    "metrics": dict(metrics or {}), "files": files}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _umask_permissions(tmp)
        replace_dir(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask_permissions(folder: Path) -> None:
    """mkdtemp makes a 0700 folder and safetensors 0600 files: give them the permissions a plain write would."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    manifest = read_folder_manifest(folder, "teacher folder", TeacherPackageError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TeacherPackageError(f"{path}: format is not {FORMAT!r}")
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise TeacherPackageError(f"{path}: schema_version {manifest.get('schema_version')} is newer than this "
                                  f"build reads ({SCHEMA_VERSION}); update clean_ros")
    if not isinstance(manifest.get("files"), dict) or set(manifest["files"]) != {CONFIG_NAME, WEIGHTS_NAME}:
        raise TeacherPackageError(f"{path}: 'files' must list {CONFIG_NAME} and {WEIGHTS_NAME} with their sha256")
    return manifest


def load_teacher_package(folder: str | Path):
    """(TwoStageConfig, TwoStageDetector in eval mode with the weights, manifest). Raises TeacherPackageError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from clean_ros.models.two_stage import TwoStageDetector
    from clean_ros.models.two_stage_config import TwoStageConfig

    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        verify_files(folder, manifest)
    except BundleError as exc:
        raise TeacherPackageError(str(exc)) from None
    try:
        cfg = load_config(TwoStageConfig, folder / CONFIG_NAME)
    except ConfigError as exc:
        raise TeacherPackageError(f"{folder / CONFIG_NAME}: {exc}") from None
    model = TwoStageDetector(cfg)
    try:
        state = load_file(str(folder / WEIGHTS_NAME))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise TeacherPackageError(f"{folder / WEIGHTS_NAME}: does not fit {CONFIG_NAME}: {first}") from None
    return cfg, model.eval(), manifest


__all__ = ["TeacherPackageError", "save_teacher_package", "load_teacher_package", "read_manifest",
           "is_teacher_package", "FORMAT", "SCHEMA_VERSION"]
