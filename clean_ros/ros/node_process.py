"""The detector node as a subprocess: the one harness that realtime replay, bench/bench_node.py and the node tests use
(start, wait until ready, stop; or run once to its exit).

    with NodeProcess({"bundle_path": ..., "input_topic": ...}, log_path=...) as node:
        client = DriverNode("my_driver", node.domain_id)
        ... publisher = client.node.create_publisher(...)
        if not node.wait_ready(client, lambda: publisher.get_subscription_count() > 0, timeout_s=120):
            raise ...(node.log_tail())

- Start: exactly as launch/detector.launch.py starts the node (launch_command: the console script's module, the params
  file, then per-parameter overrides; executable "detector_lifecycle_node" for the managed node), on a private random
  ROS_DOMAIN_ID with localhost discovery and the Fast DDS large-data profile, output to a log file (a temporary one,
  removed at stop, unless log_path is given).
- Ready: the driver's rclpy node is spun until the caller's predicate holds (typically: the node subscribed to the
  driver's cloud publisher), the node process exited, or the timeout passed.
- Stop: stop_node_process (SIGINT, then kill after a timeout).
- Once: run_node_once runs a node that is expected to exit by itself (a configuration it refuses) and returns its
  exit status and output.

The driving process publishes the large clouds itself, so the same profile must be in effect there: it is read when
the first DDS participant of a process is created, which is why the constructor sets it (unless already set) before
the caller creates its rclpy context.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from clean_ros.package_share import SOURCE_ROOT, package_path

PROFILE_FILE = "config/fastdds_large_data.xml"
PARAMS_FILE = "config/detector.yaml"
# console script (setup.py, the launch file's executable) -> the module `python -m` runs
EXECUTABLES = {"detector_node": "clean_ros.detector_node", "detector_lifecycle_node": "clean_ros.detector_lifecycle_node"}


def random_domain_id() -> int:
    """A private ROS domain, so that concurrent runs on one machine do not see each other's topics."""
    return random.SystemRandom().randint(1, 200)


def _ros_arg_value(value: Any) -> str:
    """A parameter value as `-p name:=value` wants it (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_ros_arg_value(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def launch_command(params_file: str | os.PathLike, parameters: Mapping[str, Any] | None = None,
                   log_level: str = "info", python: str | None = None,
                   executable: str = "detector_node") -> list[str]:
    """The command line that starts the node as launch/detector.launch.py does (console script `detector_node` =
    `python -m clean_ros.detector_node`, `detector_lifecycle_node` = `python -m clean_ros.detector_lifecycle_node`):
    params file first, then per-parameter overrides, then the log level."""
    command = [python or sys.executable, "-m", EXECUTABLES[executable], "--ros-args", "--params-file",
               str(params_file)]
    for name, value in (parameters or {}).items():
        command += ["-p", f"{name}:={_ros_arg_value(value)}"]
    return command + ["--log-level", log_level]


def stop_node_process(process: "subprocess.Popen", timeout_s: float = 15.0) -> int | None:
    """Stop a node started with launch_command: SIGINT (SIGTERM was occasionally lost while spinning), then kill
    if it has not exited within timeout_s. Returns its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def node_environment(domain_id: int) -> dict[str, str]:
    """The node process's environment: private domain, localhost discovery, the large-data profile, unbuffered
    output, and this source tree on the Python path (the node imports clean_ros whatever the working directory)."""
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "FASTDDS_DEFAULT_PROFILES_FILE": str(package_path(PROFILE_FILE)), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_node_once(parameters: Mapping[str, Any], *, params_file: str | os.PathLike | None = None,
                  executable: str = "detector_node", timeout_s: float = 120.0,
                  cwd: str | os.PathLike | None = None) -> tuple[int | None, str]:
    """Run a node that should exit by itself (e.g. a configuration it refuses): (exit status, its output)."""
    command = launch_command(params_file if params_file is not None else package_path(PARAMS_FILE), parameters,
                             executable=executable)
    result = subprocess.run(command, cwd=cwd, env=node_environment(random_domain_id()), capture_output=True,
                            text=True, timeout=timeout_s)
    return result.returncode, result.stdout + result.stderr


class NodeProcess:
    """A detector node subprocess (see the module docstring); a context manager that stops it on exit."""

    def __init__(self, parameters: Mapping[str, Any], *, params_file: str | os.PathLike | None = None,
                 domain_id: int | None = None, log_path: str | os.PathLike | None = None,
                 cwd: str | os.PathLike | None = None, log_level: str = "info", executable: str = "detector_node"):
        self.domain_id = domain_id if domain_id is not None else random_domain_id()
        # Our process publishes the large clouds: the profile must be in effect here (read at participant creation).
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(package_path(PROFILE_FILE)))
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        env = node_environment(self.domain_id)
        self.command = launch_command(params_file if params_file is not None else package_path(PARAMS_FILE),
                                      parameters, log_level, executable=executable)
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

    def call(self, srv_type, service: str, request, timeout_s: float = 30.0):
        """Call a service of the node (e.g. lifecycle_msgs/srv/ChangeState at /<node>/change_state) and spin until
        the response; TimeoutError when the service is absent or does not answer within timeout_s."""
        clients = self.__dict__.setdefault("_clients", {})
        client = clients.get(service)
        if client is None:
            client = clients[service] = self.node.create_client(srv_type, service)
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise TimeoutError(f"service {service} not available within {timeout_s} s")
        future = client.call_async(request)
        if not self.spin_until(future.done, timeout_s):
            raise TimeoutError(f"service {service} did not answer within {timeout_s} s")
        return future.result()

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
