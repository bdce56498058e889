"""Where the sensor is, as command-line options shared by infer and the real-data check (the node's sensor_height /
sensor_pitch / sensor_roll, auto_sensor_mount and ground_check parameters; docs/NODE.md "Where the sensor is"):

    --sensor-height M [--sensor-pitch RAD] [--sensor-roll RAD]   the mount, given
    --auto-sensor-mount                                          the mount, measured from the scans' ground
    --no-ground-check                                            do not measure the ground (no mount check line)
"""
from __future__ import annotations

import argparse

from clean_ros import defaults


def add_mount_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sensor-height", type=float, default=defaults.SENSOR_HEIGHT,
                        help="the sensor's height above the ground in metres (0 = as the model was trained: the "
                             "bundle's sensor_height, KITTI 1.73 m); docs/NODE.md 'Where the sensor is'")
    parser.add_argument("--sensor-pitch", type=float, default=0.0,
                        help="the sensor's pitch in radians (positive = tilted nose down), with --sensor-height")
    parser.add_argument("--sensor-roll", type=float, default=0.0,
                        help="the sensor's roll in radians (positive = left side up), with --sensor-height")
    parser.add_argument("--auto-sensor-mount", action="store_true", default=defaults.AUTO_SENSOR_MOUNT,
                        help="measure the sensor's height and tilt from the scans' ground and use them as the mount "
                             "(clean_ros.inference.ground_plane; instead of --sensor-height)")
    parser.add_argument("--no-ground-check", dest="ground_check", action="store_false", default=defaults.GROUND_CHECK,
                        help="do not measure the ground (by default the last line says whether the ground lies "
                             "where the model's training sensor saw it)")


def mount_from_options(args: argparse.Namespace):
    """The SensorMount the options give (None: not given), checked; ValueError (one line) for a mount that is not
    valid or given twice. Also for tools that hand the options to the node (replay's realtime mode)."""
    from clean_ros.inference.sensor_mount import SensorMount

    mount = SensorMount.from_settings(args.sensor_height, args.sensor_pitch, args.sensor_roll)
    if args.auto_sensor_mount and mount is not None:
        raise ValueError("--auto-sensor-mount and --sensor-height say where the sensor is twice: give one")
    return mount


def apply_mount_options(pipeline, args: argparse.Namespace) -> str | None:
    """Set the options' mount, ground watch and automatic mount on a Pipeline; a line to print (or None).
    ValueError (one line) for a mount that is not valid or given twice."""
    mount = mount_from_options(args)
    pipeline.set_sensor_mount(mount)
    pipeline.set_ground_watch(bool(args.ground_check or args.auto_sensor_mount))
    if args.auto_sensor_mount:
        pipeline.set_auto_mount(True)
        return ("sensor mount measured from the scans' ground (--auto-sensor-mount): points moved to a virtual "
                f"sensor at the model's {pipeline.training_sensor_height:g} m; boxes reported in the sensor frame")
    if mount is not None:
        return (f"{mount.describe()}: points moved to a virtual sensor at the model's "
                f"{pipeline.training_sensor_height:g} m; boxes reported in the sensor frame")
    return None


def mount_summary(pipeline) -> str | None:
    """The last line about the mount: the automatic mount in use and the ground check, or None (nothing measured)."""
    check = pipeline.mount_check()
    if check is None:
        return ("ground check: no scan showed enough ground to measure it"
                if pipeline.ground is not None and pipeline.ground.scans else None)
    if pipeline.auto_mount and pipeline.sensor_mount is not None:
        return f"sensor mount measured from {check.fits} scans: {pipeline.sensor_mount.describe()}"
    return f"ground check: {check.describe()}"


__all__ = ["add_mount_options", "apply_mount_options", "mount_from_options", "mount_summary"]
