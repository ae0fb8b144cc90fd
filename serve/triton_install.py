"""Where the Triton server binary is: the files of NVIDIA's `nvidia-pytriton` wheel, unpacked outside
the Python environment's packages.

The wheel bundles a real `tritonserver`, its Python backend and one backend stub per Python version,
but it pins numpy<2 while this project runs numpy 2. We need none of its Python code, only those files,
so `./install.sh` unpacks it with `pip install --no-deps --target <env>/triton/wheel`: the environment's
own packages stay as they are and `pip check` stays clean. The stub itself was built against numpy 1's
C API (numpy 2 hands it garbled tensors), so install.sh also puts numpy 1 into `<env>/triton/stub-site`,
which only the stub's `sys.path` sees, ahead of the environment's packages (serve/triton_server.py).
RESNET_DEPLOY_TRITON_HOME names another folder of that layout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from fsutil.atomic import atomic_write_text

HOME_ENV = "RESNET_DEPLOY_TRITON_HOME"
# What ./install.sh and the image (scripts/image.sh) unpack: the server's wheel and the stub's numpy.
SERVER_WHEEL = "nvidia-pytriton==0.7.0"
STUB_NUMPY = "numpy==1.26.4"
INSTALL_HINT = (
    "install it with ./install.sh (or ./install.sh --serving-only --triton), or point {env} at a folder of that layout"
)


class TritonMissing(RuntimeError):
    """The Triton binary (or a part it needs) is not installed; the message says how to install it."""


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path(sys.prefix) / "triton")


@dataclass(frozen=True)
class TritonInstall:
    """The unpacked wheel (the server binary, the Python backend, its stubs and the bundled libraries) and
    the stub's numpy."""

    home: Path

    @property
    def wheel(self) -> Path:
        return self.home / "wheel"

    @property
    def stub_site(self) -> Path:
        """numpy 1 for the backend stub, first on its sys.path."""
        return self.home / "stub-site"

    @property
    def server_dir(self) -> Path:
        return self.wheel / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.server_dir / "backends" / "python"

    @property
    def libraries(self) -> Path:
        return self.wheel / "nvidia_pytriton.libs"

    def stub(self, version: tuple[int, int] = sys.version_info[:2]) -> Path:
        """The backend stub built for this Python: it runs the model.py of every instance."""
        return self.server_dir / "python_backend_stubs" / f"{version[0]}.{version[1]}" / "triton_python_backend_stub"

    def check(self) -> TritonInstall:
        hint = INSTALL_HINT.format(env=HOME_ENV)
        for part in (
            self.binary,
            self.python_backend / "libtriton_python.so",
            self.libraries,
            self.stub_site / "numpy",
        ):
            if not part.exists():
                raise TritonMissing(f"the Triton server is not installed: {part} is missing; {hint}")
        if not self.stub().is_file():
            raise TritonMissing(
                f"{self.stub()} is missing: the wheel has no Python backend stub for Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}; use Python 3.9-3.13"
            )
        return self

    def backend_directory(self, where: Path) -> Path:
        """A backend directory for `tritonserver --backend-directory`: the wheel's Python backend with the
        stub for this Python beside it (Triton looks for the stub in the backend's own folder)."""
        python = where / "python"
        python.mkdir(parents=True, exist_ok=True)
        for source in [*self.python_backend.iterdir(), self.stub()]:
            if source.is_file():
                link = python / source.name
                link.unlink(missing_ok=True)
                link.symlink_to(source)
        return where

    def environment(self, python_env: Path) -> dict[str, str]:
        """The server's environment: the wheel's bundled libraries first on the loader's path, and
        `python_env` (stub_environment) first on PATH: the stub's embedded Python finds its prefix, and
        so its packages, from the `python3` it finds there (it ignores PYTHONPATH)."""
        libraries = [str(self.libraries), os.environ.get("LD_LIBRARY_PATH", "")]
        paths = [str(python_env / "bin"), os.environ.get("PATH", "")]
        return dict(
            os.environ,
            LD_LIBRARY_PATH=os.pathsep.join(p for p in libraries if p),
            PATH=os.pathsep.join(p for p in paths if p),
        )

    def stub_environment(self, where: Path) -> Path:
        """A virtual environment (no packages of its own) whose .pth file puts the stub's numpy 1 first and
        then this environment's packages (their own .pth files included: an editable install)."""
        if not (where / "pyvenv.cfg").is_file():
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
        site_packages = Path(sysconfig.get_paths(vars={"base": str(where), "platbase": str(where)})["purelib"])
        ours = [sysconfig.get_paths()[key] for key in ("purelib", "platlib")]
        lines = [str(self.stub_site), *(f"import site; site.addsitedir({path!r})" for path in dict.fromkeys(ours))]
        atomic_write_text(site_packages / "resnet_deploy_triton.pth", "\n".join(lines) + "\n")
        return where


def find_triton(home: Path | None = None) -> TritonInstall:
    """The installed Triton, checked; TritonMissing (with how to install it) when any part is absent."""
    return TritonInstall(Path(home) if home else default_home()).check()
