"""Stopping child processes by their id: signal, wait, and kill only if they hang."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout_s: float = 30.0) -> int:
    """Send ``sig`` (if still running), wait up to ``timeout_s``, SIGKILL if it hangs.

    Returns:
        The process's exit code.
    """
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
