"""The detector node as a subprocess: the one driver that realtime replay, bench/bench_node.py and the node tests use.

    with NodeProcess({"bundle_path": ..., "input_topic": ...}, log_path=...) as node:
        client = DriverNode("my_driver", node.domain_id)
        ... publisher = client.node.create_publisher(...)
        if not node.wait_ready(client, lambda: publisher.get_subscription_count() > 0, timeout_s=120):
            raise ...(node.log_tail())

- Start: exactly as launch/detector.launch.py starts the node (clean_ros.ros.detector_node.launch_command: the params
  file, then per-parameter overrides), on a private random ROS_DOMAIN_ID with localhost discovery and the Fast DDS
  large-data profile, output to a log file (a temporary one, removed at stop, unless log_path is given).
- Ready: the driver's rclpy node is spun until the caller's predicate holds (typically: the node subscribed to the
  driver's cloud publisher), the node process exited, or the timeout passed.
- Stop: clean_ros.ros.detector_node.stop_node_process (SIGINT, then kill after a timeout).

The driving process publishes the large clouds itself, so the same profile must be in effect there: it is read when
the first DDS participant of a process is created, which is why the constructor sets it (unless already set) before
the caller creates its rclpy context.
"""
from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from clean_ros.ros.detector_node import launch_command, stop_node_process
from clean_ros.package_share import SOURCE_ROOT, package_path

PROFILE_FILE = "config/fastdds_large_data.xml"
PARAMS_FILE = "config/detector.yaml"


def random_domain_id() -> int:
    """A private ROS domain, so that concurrent runs on one machine do not see each other's topics."""
    return random.SystemRandom().randint(1, 200)


class NodeProcess:
    """A detector node subprocess (see the module docstring); a context manager that stops it on exit."""

    def __init__(self, parameters: Mapping[str, Any], *, params_file: str | os.PathLike | None = None,
                 domain_id: int | None = None, log_path: str | os.PathLike | None = None,
                 cwd: str | os.PathLike | None = None, log_level: str = "info"):
        profile = package_path(PROFILE_FILE)
        self.domain_id = domain_id if domain_id is not None else random_domain_id()
        # Our process publishes the large clouds: the profile must be in effect here (read at participant creation).
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        env = {**os.environ, "ROS_DOMAIN_ID": str(self.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
               "FASTDDS_DEFAULT_PROFILES_FILE": str(profile), "PYTHONUNBUFFERED": "1"}
        # a source checkout: the node imports clean_ros too, whatever the working directory
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if p)
        self.command = launch_command(params_file if params_file is not None else package_path(PARAMS_FILE),
                                      parameters, log_level)
        if log_path is None:  # keep the node's output for error messages, in a temp file removed at stop
            handle, name = tempfile.mkstemp(prefix="clean_ros_node_", suffix=".log")
            os.close(handle)
            self.log_path, self._temporary_log = Path(name), True
        else:
            self.log_path, self._temporary_log = Path(log_path), False
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, client: "DriverNode", is_ready: Callable[[], bool], timeout_s: float) -> bool:
        """Spin the driver until is_ready() or the node exited; True when ready and still running."""
        client.spin_until(lambda: self.process.poll() is not None or is_ready(), timeout_s)
        return self.process.poll() is None and bool(is_ready())

    def log_text(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def failure_summary(self, chars: int = 1500) -> str:
        """The node's last FATAL line (a configuration it cannot use), else the tail of its output."""
        text = self.log_text()
        fatal = [line for line in text.splitlines() if "FATAL" in line]
        return fatal[-1] if fatal else text[-chars:]

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGINT, kill after timeout_s; removes a temporary log. Returns the exit status."""
        try:
            return stop_node_process(self.process, timeout_s)
        finally:
            if self._temporary_log:
                self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class DriverNode:
    """The driving side: its own rclpy context, node and single-threaded executor on the node's domain."""

    def __init__(self, name: str, domain_id: int, spin_period_s: float = 0.01):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spin_period_s = spin_period_s

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Handle callbacks until predicate() or timeout_s passed; returns predicate()."""
        deadline = time.monotonic() + timeout_s
        while not predicate() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=self.spin_period_s)
        return bool(predicate())

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
