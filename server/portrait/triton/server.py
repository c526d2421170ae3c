"""Start and stop the `tritonserver` binary that the `nvidia-pytriton` wheel bundles.

The wheel ships the server and its Python backend; this module lays out a backend directory
(`python/` from the wheel plus our `portrait_onnxruntime` Python-based backend), points the
backend stub at this interpreter's libpython, and runs the server on loopback ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

from portrait.modelrepo.configs import CPU_BACKEND

_BACKEND_MODEL = Path(__file__).parent / "backend" / "model.py"


class TritonStartError(RuntimeError):
    """The server did not become ready."""


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError:
        raise TritonStartError("nvidia-pytriton is not installed: pip install 'portrait[triton]'") from None
    return Path(pytriton.__file__).parent / "tritonserver"


def _backend_directory(root: Path, into: Path) -> Path:
    python = into / "python"
    python.mkdir(parents=True)
    # Copies, not links: Triton refuses backend libraries that resolve outside the directory.
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(root / "backends" / "python" / name, python / name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(root / "python_backend_stubs" / version / "triton_python_backend_stub",
                 python / "triton_python_backend_stub")
    ours = into / CPU_BACKEND
    ours.mkdir()
    shutil.copyfile(_BACKEND_MODEL, ours / "model.py")
    return into


def _environment(root: Path) -> dict[str, str]:
    """The stub must load this interpreter's libpython (LIBDIR first) and the wheel's own
    shared libraries, which its copied binary can no longer find through its RPATH."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    wheel_libs = root.parent.parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = ":".join(
        p for p in (libdir, str(wheel_libs), env.get("LD_LIBRARY_PATH")) if p
    )
    # The stub's embedded interpreter finds its prefix (and so this virtual environment's
    # site-packages) by looking for `python3` on PATH; PYTHONPATH alone does not reach it.
    env["PATH"] = ":".join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
    return env


def _last_error(log_path: Path) -> str:
    """The most telling line of a failed start: a model that did not load, else the last error."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    unavailable = [" ".join(line.strip(" |").split()) for line in lines if "UNAVAILABLE" in line]
    if unavailable:
        return "; ".join(unavailable)
    errors = [line.strip() for line in lines if line.startswith("E") or line.startswith("error")]
    return errors[-1] if errors else "no error in its log"


class TritonServer:
    def __init__(self, repository: Path, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, model_config_name: str | None = None,
                 log_file: Path | None = None, exit_timeout_s: int = 10) -> None:
        self.repository = Path(repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.model_config_name = model_config_name
        self.log_file = log_file
        self.exit_timeout_s = exit_timeout_s
        self._process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None

    def urls(self) -> dict[str, str]:
        return {
            "http": f"127.0.0.1:{self.http_port}",
            "grpc": f"127.0.0.1:{self.grpc_port}",
            "metrics": f"http://127.0.0.1:{self.metrics_port}/metrics",
        }

    def command(self, backends: Path) -> list[str]:
        root = _pytriton_root()
        args = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true", "--allow-cpu-metrics=true",
            "--exit-on-error=true", "--strict-readiness=true", "--disable-auto-complete-config",
            f"--exit-timeout-secs={self.exit_timeout_s}", "--log-verbose=0",
        ]
        if self.model_config_name:
            args.append(f"--model-config-name={self.model_config_name}")
        return args

    def start(self, timeout_s: float = 120.0) -> None:
        if not (self.repository / "manifest.json").exists():
            raise TritonStartError(f"{self.repository} has no models: run `portrait models build` first")
        root = _pytriton_root()
        self._workdir = tempfile.TemporaryDirectory(prefix="portrait-triton-")
        backends = _backend_directory(root, Path(self._workdir.name) / "backends")
        log_path = self.log_file or Path(self._workdir.name) / "tritonserver.log"
        with open(log_path, "ab") as out:
            self._process = subprocess.Popen(self.command(backends), env=_environment(root),
                                             stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                reason = _last_error(log_path)
                self._cleanup()
                raise TritonStartError(f"tritonserver exited with code {code} while starting: {reason}")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise TritonStartError(f"tritonserver not ready after {timeout_s:.0f} s")

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def wait(self) -> int:
        """Block until the server exits or this process is told to stop; stop it cleanly."""
        assert self._process is not None
        process = self._process

        def forward(signum: int, frame: object) -> None:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # Triton drains in-flight work on SIGINT

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        code = process.wait()
        self._cleanup()
        return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code

    def stop(self, timeout_s: float = 60.0) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> "TritonServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
