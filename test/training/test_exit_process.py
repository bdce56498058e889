"""exit_process: a torchrun worker leaves with its exit status and flushed output, skipping interpreter finalisation;
a single process exits normally (atexit handlers run)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import atexit, logging, sys
from training.distributed import exit_process
atexit.register(lambda: print("finalised", flush=True))
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
logging.getLogger("t").info("logged line")
sys.stdout.write("buffered line")   # no newline, no flush: must still come out
exit_process(3)
"""


def _run(world_size: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "WORLD_SIZE": world_size}
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_worker_exits_with_its_code_and_flushed_output_without_finalisation():
    proc = _run("2")
    assert proc.returncode == 3
    assert proc.stdout == "buffered line"  # flushed; the atexit handler did not run (os._exit)
    assert "logged line" in proc.stderr


def test_single_process_exits_normally():
    proc = _run("1")
    assert proc.returncode == 3
    assert proc.stdout == "buffered linefinalised\n"
