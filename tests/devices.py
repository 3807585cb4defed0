"""Simulated CPU devices for the multi-device tests: a subprocess whose XLA sees ``devices``
host devices (``--xla_force_host_platform_device_count``), while this pytest process keeps
its one device."""
import os
import subprocess
import sys


def cpu_devices_env(devices: int) -> dict[str, str]:
    """This process's environment with ``devices`` simulated CPU devices."""
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu")


def run_on_cpu_devices(script: str, devices: int = 8, timeout: float = 300) -> str:
    """Runs ``python -c script`` on ``devices`` simulated CPU devices; its stdout. Asserts it
    exits 0, showing the end of its stderr otherwise."""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=cpu_devices_env(devices), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout
