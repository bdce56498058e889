"""Model bundle: one directory that holds everything the runtime needs to run a trained detector.

    BUNDLE/
      manifest.json        schema_version, classes, input contract, geometry, DetectorConfig, post-processing,
                           training config, provenance, metrics, export info, sha256 of every other file
      weights.safetensors  the detector's state_dict (safetensors: a flat tensor table, it cannot run code)
      model.onnx           the dense part (BEV backbone + head): BEV canvas -> raw head maps
      encoder.onnx         (pillar models) the pillar feature net, dynamic number of pillars
      model.int8.onnx      (optional) the dense part quantized to int8 for ONNX Runtime (training/quantize_bundle.py)

`save_bundle` writes the directory under a temporary name next to the target and renames it into place, so a
reader never sees half a bundle. `load_bundle` validates the manifest (required fields, their types, the schema
version), checks every file's sha256 (verify=True), and reads weights only through safetensors: a pickle planted
as weights is a parse error, never executed. Every problem is a BundleError whose message names the bundle, the
file or field, and what is wrong. The format is described for users in docs/BUNDLE.md.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

import clean_ros
from clean_ros.yaml_config import ConfigError, from_dict, to_dict
from clean_ros.models.detector_config import DetectorConfig, PostProcessConfig
from clean_ros.inference.ground_gate import check_max_gap
from clean_ros.inference.operating_points import FIELD as OPERATING_POINTS_FIELD
from clean_ros.inference.operating_points import OperatingPoint, parse_operating_points
from clean_ros.inference.sensor_mount import TRAINING_SENSOR_HEIGHT_M
from clean_ros.provenance import git_commit

FORMAT = "clean_ros.bundle"
SCHEMA_VERSION = 1  # the newest manifest schema this build reads (and the one it writes)
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.safetensors"
DENSE_ONNX_NAME = "model.onnx"
ENCODER_ONNX_NAME = "encoder.onnx"
INT8_ONNX_NAME = "model.int8.onnx"

# Conventional per-point feature layouts: (name, expected value range or None, unit).
_KNOWN_FEATURES = {
    "x": (None, "m"), "y": (None, "m"), "z": (None, "m"),
    "intensity": ((0.0, 1.0), "reflectance, KITTI scale"),
    "time": ((0.0, 0.1), "s since sweep start"),
}
_DEFAULT_FEATURE_NAMES = ("x", "y", "z", "intensity", "time")

# Required manifest fields and their JSON types (checked on load, before anything else is used).
_REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "schema_version": (int,),
    "class_names": (list,),
    "point_features": (list,),
    "point_cloud_range": (list,),
    "voxel_size": (list,),
    "detector_config": (dict,),
    "postprocess": (dict,),
    "training_config": (dict,),
    "provenance": (dict,),
    "metrics": (dict,),
    "export": (dict,),
    "files": (dict,),
}
_PROVENANCE_KEYS = ("method", "teacher", "pruning_ratio", "source_git_commit", "created_utc", "clean_ros_version")


class BundleError(ValueError):
    """A bundle that cannot be written or used; the message names the bundle, the file or field, and the problem."""


# --------------------------------------------------------------------------------------------------- helpers
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def default_point_features(num_point_features: int,
                           names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Manifest entries for the per-point features: name, expected range ([lo, hi] or null), scale, unit.

    scale is the factor the runtime applies to the raw field before it reaches the network (1.0: the model
    expects the value as delivered in that range). The default layout is KITTI's x, y, z, intensity [0, 1].
    """
    names = list(names) if names is not None else list(_DEFAULT_FEATURE_NAMES[:num_point_features])
    if len(names) != num_point_features:
        raise BundleError(f"point_features: {len(names)} names {names} for num_point_features={num_point_features}")
    out = []
    for name in names:
        expected, unit = _KNOWN_FEATURES.get(name, (None, ""))
        out.append({"name": name, "range": list(expected) if expected else None, "scale": 1.0, "unit": unit})
    return out


def _json_safe(value: Any, where: str) -> Any:
    """Plain JSON values (dataclasses, tuples, numpy / torch scalars converted); anything else is an error."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = to_dict(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    raise BundleError(f"{where}: {type(value).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------------------------------- Bundle
@dataclass
class Bundle:
    """A loaded, validated bundle. Weights are read lazily (build_detector / state_dict)."""

    path: Path
    manifest: dict
    detector_config: DetectorConfig  # postprocess = the manifest's "postprocess" section

    @property
    def schema_version(self) -> int:
        return int(self.manifest["schema_version"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["class_names"])

    @property
    def point_features(self) -> tuple[str, ...]:
        return tuple(f["name"] for f in self.manifest["point_features"])

    @property
    def feature_ranges(self) -> dict[str, tuple[float, float]]:
        return {f["name"]: (float(f["range"][0]), float(f["range"][1]))
                for f in self.manifest["point_features"] if f.get("range") is not None}

    @property
    def point_cloud_range(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.manifest["point_cloud_range"])

    @property
    def voxel_size(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.manifest["voxel_size"])

    @property
    def sensor_height(self) -> float:
        """Height (m) above the ground of the sensor the model was trained with (manifest field `sensor_height`;
        bundles written before it existed: KITTI's HDL-64 at 1.73 m). clean_ros.inference.sensor_mount uses it."""
        return float(self.manifest.get("sensor_height", TRAINING_SENSOR_HEIGHT_M))

    @property
    def intensity_level(self) -> float | None:
        """Median intensity of the training scans' returns 3-40 m away (manifest field `intensity_level`; None in
        bundles written before it existed). clean_ros.inference.intensity_level scales other sensors to it."""
        level = self.manifest.get("intensity_level")
        return None if level is None else float(level)

    @property
    def ground_height(self) -> float:
        """The training scans' ground, metres below the sensor, as clean_ros.inference.ground_plane measures it
        (manifest field `ground_height`, the median over the training split); bundles without it: sensor_height. The
        mount check and the automatic mount compare another sensor's measured ground with it, so the estimator's own
        bias (its cell minima sit a few cm off the mean surface) cancels."""
        value = self.manifest.get("ground_height")
        return self.sensor_height if value is None else float(value)

    @property
    def ground_gate_m(self) -> float:
        """The ground-contact gate's largest gap in metres (manifest field `ground_gate_m`, chosen on the simulated
        val split by training/ground_gate.py; clean_ros.inference.ground_gate); 0 = off, also in bundles without it."""
        return float(self.manifest.get("ground_gate_m", 0.0))

    @functools.cached_property
    def operating_points(self) -> tuple[OperatingPoint, ...]:
        """Other per-class score thresholds the bundle offers, by val false-positive budget (manifest field
        `operating_points`, clean_ros.inference.operating_points; () in bundles without it). Parsed once: the node's
        diagnostics read it every period."""
        return parse_operating_points(self.manifest.get(OPERATING_POINTS_FIELD), self.class_names)

    @property
    def postprocess(self) -> PostProcessConfig:
        return self.detector_config.postprocess

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_NAME

    def _listed(self, name: str) -> Path | None:
        return self.path / name if name in self.manifest["files"] else None

    @property
    def onnx_path(self) -> Path | None:
        """The dense part (BEV canvas -> head maps) as ONNX, or None if the bundle was saved without it."""
        return self._listed(DENSE_ONNX_NAME)

    @property
    def int8_onnx_path(self) -> Path | None:
        """The dense part quantized to int8 (QDQ, training/quantize_bundle.py), or None."""
        return self._listed(INT8_ONNX_NAME)

    @property
    def encoder_onnx_path(self) -> Path | None:
        """The pillar feature net as ONNX (dynamic pillar count), or None."""
        return self._listed(ENCODER_ONNX_NAME)

    def input_contract(self, frame_id: str | None = None):
        """The clean_ros.cloud.pointcloud.InputContract this model was trained with."""
        from clean_ros.cloud.pointcloud import InputContract

        return InputContract(point_features=self.point_features, point_cloud_range=self.point_cloud_range,
                             feature_ranges=self.feature_ranges, frame_id=frame_id)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights through safetensors only, checked against the config's parameter names and shapes."""
        return _read_weights(self.weights_path, self.detector_config)

    def build_detector(self, device: str | torch.device = "cpu"):
        """The torch Detector of this bundle, weights loaded, in eval mode."""
        from clean_ros.models.detector import build_detector

        detector = build_detector(self.detector_config)
        detector.load_state_dict(self.state_dict(), strict=True)
        return detector.eval().to(device)

    def summary(self) -> str:
        prov = self.manifest["provenance"]
        return (f"bundle {self.path} (schema {self.schema_version}, model {self.detector_config.name}, "
                f"classes {', '.join(self.class_names)}, method {prov.get('method')}, "
                f"created {prov.get('created_utc')})")


# --------------------------------------------------------------------------------------------------- loading
def _read_weights(path: Path, cfg: DetectorConfig) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from clean_ros.models.detector import build_detector

    bundle = path.parent
    if not path.is_file():
        raise BundleError(f"{bundle}: weights file {WEIGHTS_NAME} is missing")
    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: corrupt weights: not a readable safetensors file ({first}); "
                          f"weights are only ever read as safetensors, never unpickled") from None
    expected = {k: tuple(v.shape) for k, v in build_detector(cfg).state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [f"{k}: file {tuple(weights[k].shape)} vs config {expected[k]}"
             for k in expected if k in weights and tuple(weights[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (first: {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} shapes differ (first: {'; '.join(wrong[:3])})")
    if problems:
        raise BundleError(f"{path}: weights do not match the manifest's detector_config: {'; '.join(problems)}")
    return weights


def _check_type(bundle: Path, name: str, value: Any, types: tuple[type, ...]) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        wanted = " or ".join({int: "an integer", str: "a string", list: "a list", dict: "an object"}.get(t, t.__name__)
                             for t in types)
        raise BundleError(f"{bundle / MANIFEST_NAME}: field {name!r} must be {wanted}, got "
                          f"{type(value).__name__} {json.dumps(value)[:60]}")


def _validate_manifest(bundle: Path, manifest: Any) -> None:
    where = bundle / MANIFEST_NAME
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: top level must be a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{where}: not a clean_ros bundle manifest (field 'format' must be {FORMAT!r}, "
                          f"got {manifest.get('format')!r})")
    version = manifest.get("schema_version")
    if version is None:
        raise BundleError(f"{where}: missing required field 'schema_version'")
    _check_type(bundle, "schema_version", version, (int,))
    if version > SCHEMA_VERSION:
        raise BundleError(f"{bundle}: written by a newer clean_ros: schema {version}, this build "
                          f"(clean_ros {clean_ros.__version__}) reads <= {SCHEMA_VERSION}; upgrade clean_ros")
    if version < 1:
        raise BundleError(f"{where}: schema_version {version} is not valid (first schema is 1)")
    missing = [k for k in _REQUIRED_FIELDS if k not in manifest]
    if missing:
        raise BundleError(f"{where}: missing required field{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(m) for m in missing)}")
    for name, types in _REQUIRED_FIELDS.items():
        _check_type(bundle, name, manifest[name], types)
    if not manifest["class_names"] or not all(isinstance(c, str) for c in manifest["class_names"]):
        raise BundleError(f"{where}: field 'class_names' must be a non-empty list of strings")
    for i, feat in enumerate(manifest["point_features"]):
        if not isinstance(feat, dict) or not isinstance(feat.get("name"), str):
            raise BundleError(f"{where}: point_features[{i}] must be an object with a string 'name'")
        rng = feat.get("range")
        if rng is not None and not (isinstance(rng, list) and len(rng) == 2
                                    and all(isinstance(v, (int, float)) for v in rng)):
            raise BundleError(f"{where}: point_features[{i}] ({feat['name']}): 'range' must be [lo, hi] or null")
    for key, n in (("point_cloud_range", 6), ("voxel_size", 3)):
        value = manifest[key]
        if len(value) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise BundleError(f"{where}: field {key!r} must be a list of {n} numbers, got {value}")
    for name, entry in manifest["files"].items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or len(entry["sha256"]) != 64):
            raise BundleError(f"{where}: files[{name!r}] must be an object with a 64-hex 'sha256'")
        if "/" in name or "\\" in name or name.startswith("."):
            raise BundleError(f"{where}: files[{name!r}]: bundle files must be plain names inside the bundle")
    if WEIGHTS_NAME not in manifest["files"]:
        raise BundleError(f"{where}: field 'files' does not list {WEIGHTS_NAME}")
    height = manifest.get("sensor_height")  # optional (older bundles: KITTI's 1.73 m)
    if height is not None and (isinstance(height, bool) or not isinstance(height, (int, float))
                               or not 0.0 < height <= 100.0):
        raise BundleError(f"{where}: field 'sensor_height' must be the training sensor's height above the ground "
                          f"in metres (0 < h <= 100), got {json.dumps(height)[:60]}")
    level = manifest.get("intensity_level")  # optional (older bundles: no automatic intensity scale)
    if level is not None and (isinstance(level, bool) or not isinstance(level, (int, float))
                              or not math.isfinite(level) or level <= 0):
        raise BundleError(f"{where}: field 'intensity_level' must be the training scans' median intensity, a number "
                          f"> 0, got {json.dumps(level)[:60]}")
    ground = manifest.get("ground_height")  # optional (older bundles: the sensor_height is the reference)
    if ground is not None and (isinstance(ground, bool) or not isinstance(ground, (int, float))
                               or not math.isfinite(ground) or not 0.0 < ground <= 100.0):
        raise BundleError(f"{where}: field 'ground_height' must be the training scans' ground distance below the "
                          f"sensor in metres (0 < h <= 100), got {json.dumps(ground)[:60]}")
    gate = manifest.get("ground_gate_m")  # optional (older bundles: no ground-contact gate)
    if gate is not None:
        try:
            check_max_gap(gate)
        except ValueError as exc:
            raise BundleError(f"{where}: field {exc}") from None
    try:  # optional (older bundles: none)
        parse_operating_points(manifest.get(OPERATING_POINTS_FIELD), manifest["class_names"])
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}") from None


def _detector_config_of(bundle: Path, manifest: dict) -> DetectorConfig:
    where = bundle / MANIFEST_NAME
    data = dict(manifest["detector_config"])
    data["postprocess"] = manifest["postprocess"]  # the manifest's post-processing section is authoritative
    try:
        cfg = from_dict(DetectorConfig, data, where="detector_config")
    except ConfigError as exc:
        raise BundleError(f"{where}: {exc}") from None
    if list(cfg.class_names) != list(manifest["class_names"]):
        raise BundleError(f"{where}: class_names {manifest['class_names']} differ from detector_config.class_names "
                          f"{cfg.class_names}")
    for key in ("point_cloud_range", "voxel_size"):
        if [float(v) for v in getattr(cfg, key)] != [float(v) for v in manifest[key]]:
            raise BundleError(f"{where}: {key} {manifest[key]} differs from detector_config.{key} "
                              f"{getattr(cfg, key)}")
    if len(manifest["point_features"]) != cfg.num_point_features:
        raise BundleError(f"{where}: {len(manifest['point_features'])} point_features but detector_config "
                          f"expects num_point_features={cfg.num_point_features}")
    return cfg


def verify_files(bundle: Path, manifest: dict) -> None:
    """Every file listed in the manifest exists and has the recorded sha256."""
    for name, entry in manifest["files"].items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{bundle}: file {name} listed in the manifest is missing")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise BundleError(f"{bundle}: hash mismatch for {name}: sha256 {digest[:16]}... but the manifest records "
                              f"{entry['sha256'][:16]}...; the file was modified or corrupted after export")


def read_folder_manifest(folder: Path, kind: str, error: type[Exception] = BundleError) -> Any:
    """The parsed manifest.json of a model folder (a bundle, a teacher), or `error` with one line saying what is
    wrong: no such folder, a file instead of a folder, no manifest, unreadable, invalid JSON (with its line)."""
    if not folder.exists():
        raise error(f"{folder}: {kind} directory does not exist")
    if not folder.is_dir():
        raise error(f"{folder}: a {kind} is a directory (with {MANIFEST_NAME}), this is a file")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise error(f"{folder}: no {MANIFEST_NAME}: not a clean_ros {kind}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {exc}") from None


def manifest_field(folder: Path, name: str) -> Any:
    """One top-level field of a model folder's manifest.json, or None when the folder has no readable manifest or
    the manifest no such field (for tools that only look, e.g. "is this a bundle or a teacher package")."""
    try:
        manifest = read_folder_manifest(Path(folder), "bundle")
    except BundleError:
        return None
    return manifest.get(name) if isinstance(manifest, dict) else None


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read and validate a bundle directory (see the module docstring). Raises BundleError."""
    bundle = Path(path)
    manifest = read_folder_manifest(bundle, "bundle", BundleError)
    _validate_manifest(bundle, manifest)
    cfg = _detector_config_of(bundle, manifest)
    if verify:
        verify_files(bundle, manifest)
    return Bundle(path=bundle, manifest=manifest, detector_config=cfg)


# --------------------------------------------------------------------------------------------------- saving
def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished temp directory to `out`; an existing bundle is swapped out, then removed."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if not out.is_dir():
        raise BundleError(f"{out}: exists and is not a directory; not overwritten")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / out.name, out)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_bundle(out_dir: str | Path, detector, detector_cfg: DetectorConfig, *,
                training_config: Any = None, provenance: Mapping[str, Any] | None = None,
                metrics: Mapping[str, Any] | None = None, export_onnx: bool = True,
                point_features: Sequence[str] | Sequence[Mapping[str, Any]] | None = None,
                export_encoder: bool = True, sensor_height: float | None = None,
                intensity_level: float | None = None, ground_height: float | None = None,
                operating_points: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write `detector` (a clean_ros Detector built from `detector_cfg`) as a bundle directory, atomically.

    training_config: any dataclass / mapping (stored as an opaque dict). provenance: teacher, method,
    pruning_ratio, ... (source_git_commit, created_utc and clean_ros_version are filled in). metrics: e.g. the
    compression report's row. point_features: names (ranges from the conventional table) or full entries;
    default x, y, z, intensity [0, 1]. export_onnx: also write model.onnx (+ encoder.onnx for pillar models
    when export_encoder). sensor_height: the training sensor's height above the ground in metres (default
    KITTI's 1.73 m). intensity_level: the training scans' intensity level (clean_ros.inference.intensity_level;
    None: not recorded, so no automatic intensity). ground_height: the training scans' ground as
    clean_ros.inference.ground_plane measures it (None: not recorded; the mount check and the automatic mount then
    take sensor_height). operating_points: the manifest field's entries
    (clean_ros.inference.operating_points; checked before anything is written). An existing bundle at out_dir is replaced only once the new one
    is complete.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    if point_features is None or (point_features and isinstance(point_features[0], str)):
        features = default_point_features(detector_cfg.num_point_features, point_features)  # type: ignore[arg-type]
    else:
        features = _json_safe(list(point_features), "point_features")
    if len(features) != detector_cfg.num_point_features:
        raise BundleError(f"point_features lists {len(features)} features, the config has "
                          f"num_point_features={detector_cfg.num_point_features}")
    prov = {k: None for k in _PROVENANCE_KEYS}
    prov.update(_json_safe(dict(provenance or {}), "provenance"))
    prov.setdefault("source_git_commit", None)
    prov["source_git_commit"] = prov["source_git_commit"] or git_commit(timeout_s=5) or "unknown"
    prov["created_utc"] = prov["created_utc"] or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    prov["clean_ros_version"] = clean_ros.__version__
    cfg_dict = to_dict(detector_cfg)
    sensor_height = TRAINING_SENSOR_HEIGHT_M if sensor_height is None else sensor_height
    try:
        points = parse_operating_points(_json_safe(list(operating_points or []), OPERATING_POINTS_FIELD),
                                        detector_cfg.class_names)
    except ValueError as exc:
        raise BundleError(f"{out}: {exc}") from None

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in detector.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        export_info: dict[str, Any] = {"dense_onnx": None, "encoder_onnx": None}
        if export_onnx:
            from clean_ros.inference.onnx_export import export_dense_onnx, export_encoder_onnx

            export_info["dense_onnx"] = export_dense_onnx(detector, detector_cfg, tmp / DENSE_ONNX_NAME)
            if export_encoder and detector_cfg.encoder.type == "pillar" and detector_cfg.backbone_3d.type == "none":
                export_info["encoder_onnx"] = export_encoder_onnx(detector, detector_cfg, tmp / ENCODER_ONNX_NAME)
        for p in tmp.iterdir():
            os.chmod(p, 0o644)  # safetensors writes 0600; a bundle is read by other users (the ROS node's)
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "class_names": list(detector_cfg.class_names),
            "point_features": features,
            "point_cloud_range": [float(v) for v in detector_cfg.point_cloud_range],
            "voxel_size": [float(v) for v in detector_cfg.voxel_size],
            "detector_config": cfg_dict,
            "postprocess": cfg_dict["postprocess"],
            "training_config": _json_safe(training_config if training_config is not None else {}, "training_config"),
            "provenance": prov,
            "metrics": _json_safe(dict(metrics or {}), "metrics"),
            "export": export_info,
            "sensor_height": float(sensor_height),
            "files": files,
        }
        if intensity_level is not None:
            manifest["intensity_level"] = round(float(intensity_level), 6)
        if ground_height is not None:
            manifest["ground_height"] = round(float(ground_height), 6)
        if points:
            manifest[OPERATING_POINTS_FIELD] = [p.as_manifest() for p in points]
        _write_json(tmp / MANIFEST_NAME, manifest)
        os.chmod(tmp / MANIFEST_NAME, 0o644)
        _validate_manifest(tmp, manifest)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["Bundle", "BundleError", "SCHEMA_VERSION", "MANIFEST_NAME", "WEIGHTS_NAME", "DENSE_ONNX_NAME",
           "ENCODER_ONNX_NAME", "load_bundle", "save_bundle", "verify_files", "sha256_file",
           "default_point_features", "replace_dir", "read_folder_manifest", "manifest_field"]
