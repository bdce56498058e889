"""Process settings of the ROS tests, made before any test runs.

Fast DDS reads FASTDDS_DEFAULT_PROFILES_FILE once per process, when the process creates its first DDS participant.
clean_ros.ros.node_process sets the large-data profile (config/fastdds_large_data.xml) before its driver's
participant, but a test that created a participant earlier in the same pytest run (an in-process node,
test_ros_plumbing, test_tf_buffer) left the whole process on the default transports, which lose large best-effort
clouds between processes. Realtime replay run after test_ros_plumbing in one process lost 2, 5, 1, 2, 4 and 3 of
its 6 clouds in 6 runs, and its test fails when all 6 are lost: the outcome depended on which tests ran before it.
Setting the profile here, at collection, gives every participant of the run the transports the launch file gives
the node. test_dds_delivery.py removes it from its subprocesses' environment where it measures the default.
"""
import os

from clean_ros.package_share import package_path
from clean_ros.ros.node_process import PROFILE_FILE

os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(package_path(PROFILE_FILE)))
