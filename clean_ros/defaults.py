"""Defaults that several tools write down, in one place: the detector node, its params file and launch file, replay,
infer and the benchmarks read them from here, so they cannot drift apart.

config/detector.yaml and launch/detector.launch.py repeat some of these values (YAML cannot import Python);
test/clean_ros/test_defaults.py fails when one of them, or a tool's command-line default, differs from this module.
Score thresholds and the rest of the post-processing settings are not here: they come from the model bundle.
Pure constants, no imports: the launch file and every tool can read them at no cost.
"""
from __future__ import annotations

NODE_NAME = "clean_ros_detector"      # also the key of config/detector.yaml

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
BACKEND = "auto"                      # best available backend, logged at start
DEVICE = "cpu"
# torch CPU threads. 1: on 2 cores the LiDAR driver needs the other one (docs/NODE.md "Threads"); the tools that run
# or measure the node's model (replay, bench_node, bench_replay, bench_backends) use the same default.
NUM_THREADS = 1
WARMUP_ITERATIONS = 3                 # inference runs before the first frame (excluded from statistics)

INPUT_TOPIC = "/points"               # sensor_msgs/PointCloud2
OUTPUT_TOPIC = "/detections"          # vision_msgs/Detection3DArray; markers on <OUTPUT_TOPIC>/markers
STAGE_LATENCY_TOPIC = f"/{NODE_NAME}/stage_latency"   # the node's ~/stage_latency under its default name

INTENSITY_SCALE = 1.0                 # input intensity multiplier (0-255 sensors on a [0, 1] model: 1 / 255)
# Scale each scan's intensity to the bundle's training level (clean_ros.inference.intensity_level) when the bundle
# records one; on for the node, infer, replay and the real-data check (off: --no-auto-intensity / auto_intensity false).
AUTO_INTENSITY = True
# Fit the ground of the scans and compare it with the training scans' ground (clean_ros.inference.ground_plane): the
# node's /diagnostics key `ground`, infer's and replay's last line (off: ground_check false / --no-ground-check).
GROUND_CHECK = True
# Use that measured ground as the sensor mount (node auto_sensor_mount, --auto-sensor-mount); off: sensor_height.
AUTO_SENSOR_MOUNT = False
EXPECTED_RATE_HZ = 10.0               # sensor rate

# Input boxes [x_min, y_min, z_min, x_max, y_max, z_max] (m, the model's input frame); both off by default (node
# parameters crop_box_enabled / exclusion_box_enabled). The exclusion box's default is an example: a car around a
# roof-mounted sensor.
CROP_BOX = (-80.0, -80.0, -5.0, 80.0, 80.0, 5.0)
EXCLUSION_BOX = (-2.5, -1.2, -2.5, 2.5, 1.2, 0.5)
# Range bands (m, BEV distance) of the range-dependent score thresholds when the bundle sets none (they start off).
RANGE_BREAKPOINTS = (30.0, 50.0)
# Frames (docs/NODE.md "Frames (TF)", "Where the sensor is"): "" = the cloud's own frame; a TF lookup at the cloud's
# stamp may wait TF_TIMEOUT_S; SENSOR_HEIGHT 0 = off (points reach the model as they are; infer / replay use it too).
TARGET_FRAME = ""
MODEL_FRAME = ""
TF_TIMEOUT_S = 0.05
SENSOR_HEIGHT = 0.0
MAX_POINTS = 1_000_000                # clouds above this are decimated (every k-th point) by the node and replay
