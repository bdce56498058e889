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
EXPECTED_RATE_HZ = 10.0               # sensor rate
