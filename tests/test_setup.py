"""Set-up on any Linux, as any user: scripts/check-system.sh checks capabilities (compiler,
Python headers, pkg-config finding libjpeg-turbo and OpenCV), scripts/setup.sh passes
TORCH_INDEX_URL to pip, and Fashion-MNIST is found by one lookup in a fixed order.

The scripts run for real, with fake tools first on PATH (pkg-config hiding a module, `id`
saying root, apt-get/dnf recording what they were asked) and PATHs without dpkg-query."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagenet_repro import cli
from imagenet_repro.data import imagefolder
from imagenet_repro.data.imagefolder import FASHION_MNIST_FILES, fashion_mnist_source
from imagenet_repro.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "scripts" / "check-system.sh"
SETUP = REPO / "scripts" / "setup.sh"
IDX_FILES = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
CLEARED = ("PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR", "CONDA_PREFIX", "CPATH", "LIBRARY_PATH", "LD_LIBRARY_PATH",
           "CC", "CXX", "LDFLAGS", "TORCH_INDEX_URL", "VENV")


def _have_build_libs() -> bool:
    """pkg-config finds libjpeg-turbo and OpenCV here, as the build needs them."""
    def found(module: str) -> bool:
        return subprocess.run(["pkg-config", "--exists", module]).returncode == 0

    return shutil.which("pkg-config") is not None and found("libturbojpeg") and (found("opencv4") or found("opencv"))


# Only the tests that pass the check for real, or copy the libraries' .pc files, need them;
# the others fake what they hide (pkg-config, headers, root, apt-get/dnf) and run anywhere.
needs_libs = pytest.mark.skipif(
    not _have_build_libs(), reason="needs pkg-config finding libturbojpeg and opencv4: scripts/check-system.sh "
                                   "prints the apt/dnf/conda line to install them")


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture(scope="module")
def no_dpkg_path(tmp_path_factory) -> str:
    """A PATH with every command of this machine's PATH except dpkg*, apt* and dnf, as links."""
    sandbox = tmp_path_factory.mktemp("nodpkg-bin")
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = os.path.join(d, name)
            if name.startswith(("dpkg", "apt")) or name == "dnf" or (sandbox / name).exists():
                continue
            if os.access(target, os.X_OK) and not os.path.isdir(target):
                (sandbox / name).symlink_to(target)
    return str(sandbox)


@pytest.fixture
def fakes(tmp_path) -> Path:
    d = tmp_path / "fake-bin"
    d.mkdir()
    fake(d, "id", 'if [ "$1" = -u ]; then echo 1000; else exec /usr/bin/id "$@"; fi')  # not root, whoever runs the tests
    return d


def run(cmd, path: str, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in CLEARED}
    base.update(PATH=path, PYTHON=sys.executable if not env.get("PYTHON") else env.pop("PYTHON"), **env)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=base, timeout=300)


def hide_turbojpeg(bin_dir: Path) -> None:
    real = shutil.which("pkg-config")
    fake(bin_dir, "pkg-config", f'case "$*" in *libturbojpeg*) exit 1;; esac\nexec {real} "$@"')


# ---------------------------------------------------------------------------- capability checks
@needs_libs
def test_check_passes_with_the_libraries_and_no_dpkg_query(no_dpkg_path, fakes):
    assert shutil.which("dpkg-query", path=no_dpkg_path) is None and shutil.which("apt-get", path=no_dpkg_path) is None
    res = run([CHECK], f"{fakes}:{no_dpkg_path}")
    assert res.returncode == 0, res.stderr
    assert "setup: found:" in res.stderr and "libturbojpeg" in res.stderr and "opencv" in res.stderr


def test_missing_libturbojpeg_names_it_and_prints_the_three_install_lines(fakes):
    hide_turbojpeg(fakes)
    res = run([CHECK, "--install"], f"{fakes}:{os.environ['PATH']}")  # --install as non-root: only advice
    assert res.returncode == 1
    err = res.stderr
    assert "missing: libjpeg-turbo: pkg-config finds no module libturbojpeg" in err
    assert "sudo apt-get install -y libturbojpeg0-dev\n" in err
    assert "sudo dnf install -y turbojpeg-devel " in err and "epel-release" in err
    assert "conda install -c conda-forge libjpeg-turbo " in err
    assert "opencv" not in err.split("install it with")[1].split("or, with")[0].lower()  # only what is missing
    assert "installing" not in err


def test_without_pkg_config_all_three_lines_name_it(no_dpkg_path, fakes, tmp_path):
    sandbox = tmp_path / "bin"  # the no-dpkg PATH without pkg-config either
    sandbox.mkdir()
    for entry in os.scandir(no_dpkg_path):
        if "pkg-config" not in entry.name and "pkgconf" not in entry.name:
            (sandbox / entry.name).symlink_to(os.readlink(entry.path))
    res = run([CHECK], f"{fakes}:{sandbox}")
    assert res.returncode == 1
    assert "missing: pkg-config" in res.stderr
    assert "apt-get install -y pkg-config libturbojpeg0-dev libopencv-dev" in res.stderr
    assert "dnf install -y pkgconf-pkg-config turbojpeg-devel opencv-devel" in res.stderr
    assert "conda-forge pkg-config libjpeg-turbo opencv" in res.stderr


def test_missing_python_headers_are_named(fakes, tmp_path):
    # a Python whose include dir has no Python.h (a venv-less python3 without python3-dev)
    fake_py = fakes / "python3-noheaders"
    fake_py.write_text(f'#!/bin/sh\ncase "$*" in *get_paths*) echo {tmp_path};; *) exec {sys.executable} "$@";; esac\n')
    fake_py.chmod(0o755)
    res = run([CHECK], f"{fakes}:{os.environ['PATH']}", PYTHON=str(fake_py))
    assert res.returncode == 1
    assert f"missing: Python's C headers ({tmp_path}/Python.h" in res.stderr
    assert "python3-dev" in res.stderr and "python3-devel" in res.stderr


@pytest.mark.parametrize("manager", ["apt-get", "dnf"])
def test_root_installs_what_is_missing_with_its_package_manager(no_dpkg_path, tmp_path, manager):
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    fake(bin_dir, "id", 'if [ "$1" = -u ]; then echo 0; else exec /usr/bin/id "$@"; fi')
    fake(bin_dir, manager, f'echo "{manager} $*" >> {log}; echo "{manager} chatter"')
    hide_turbojpeg(bin_dir)  # still hidden after the "install": the re-check reports it
    res = run([CHECK, "--install"], f"{bin_dir}:{no_dpkg_path}")
    assert res.returncode == 1
    calls = log.read_text()
    if manager == "apt-get":
        assert "apt-get -o Acquire::Retries=3 install -y -qq libturbojpeg0-dev" in calls  # a transient error retried
    else:
        assert calls.splitlines()[0] == "dnf install -y -q turbojpeg-devel"
    assert f"installing with {manager}" in res.stderr and "missing: libjpeg-turbo" in res.stderr
    assert "chatter" in res.stderr and "chatter" not in res.stdout  # stdout is only for setup.sh's exports


@needs_libs
@pytest.mark.parametrize("var", ["PKG_CONFIG_PATH", "CONDA_PREFIX", "LIBRARY_PATH", "CPATH"])
def test_pkg_config_looks_where_conda_and_modules_put_libraries(fakes, tmp_path, var):
    # a prefix like a conda env or a module's, holding the .pc files; pkg-config's default path emptied
    prefix = tmp_path / "prefix"
    (prefix / "lib" / "pkgconfig").mkdir(parents=True)
    (prefix / "include").mkdir()
    for mod in ("libturbojpeg", "opencv4"):
        pc = subprocess.run(["pkg-config", "--variable=pcfiledir", mod], capture_output=True, text=True).stdout.strip()
        if pc:
            shutil.copy(Path(pc) / f"{mod}.pc", prefix / "lib" / "pkgconfig")
    where = {"PKG_CONFIG_PATH": prefix / "lib" / "pkgconfig", "CONDA_PREFIX": prefix,
             "LIBRARY_PATH": prefix / "lib", "CPATH": prefix / "include"}[var]
    path = f"{fakes}:{os.environ['PATH']}"
    assert run([CHECK], path, PKG_CONFIG_LIBDIR=str(tmp_path / "none")).returncode == 1  # nowhere else to look
    res = run([CHECK], path, PKG_CONFIG_LIBDIR=str(tmp_path / "none"), **{var: str(where)})
    assert res.returncode == 0, res.stderr
    assert f"export PKG_CONFIG_PATH={prefix / 'lib' / 'pkgconfig'}" in res.stdout  # handed on to ffcv's build


# ---------------------------------------------------------------------------- setup.sh
@pytest.fixture
def fake_venv(tmp_path) -> tuple[Path, Path]:
    """A VENV whose python records its arguments instead of installing anything."""
    venv, log = tmp_path / "venv", tmp_path / "python.log"
    (venv / "bin").mkdir(parents=True)
    fake(venv / "bin", "python", f'echo "$*" >> {log}')
    return venv, log


def _pins() -> str:
    """'torch==X torchvision==Y' as pinned in pyproject.toml."""
    return " ".join(re.findall(r'"((?:torch|torchvision)==[^"]+)"', (REPO / "pyproject.toml").read_text()))


@needs_libs
def test_setup_passes_torch_index_url_to_pip_and_restamps_when_it_changes(fake_venv, fakes):
    venv, log = fake_venv
    path = f"{fakes}:{os.environ['PATH']}"
    url = "https://download.pytorch.org/whl/cu126"
    res = run([SETUP], path, VENV=str(venv), TORCH_INDEX_URL=url)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    cu126 = " ".join(f"{pin}+cu126" for pin in _pins().split())  # that variant, replacing another one
    pip = "-m pip install -q --retries 5"  # a transient registry error is retried
    assert f"{pip} {cu126} --index-url {url}" in calls
    # then everything else exactly as locked, hash-checked, then the package alone, then pip check
    order = [f"{pip} {cu126} --index-url {url}", f"{pip} --require-hashes --no-deps -r requirements.lock",
             f"{pip} --no-deps -e .", "-m pip check"]
    assert [calls.index(c) for c in order] == sorted(calls.index(c) for c in order)
    assert f"from {url}" in res.stdout and (venv / ".setup-stamp").is_file()
    (venv / "bin" / "repro").write_text("")
    (venv / "bin" / "repro").chmod(0o755)
    log.unlink()
    assert run([SETUP], path, VENV=str(venv), TORCH_INDEX_URL=url).returncode == 0
    assert not log.exists()  # stamp unchanged: nothing ran
    assert run([SETUP], path, VENV=str(venv)).returncode == 0  # default index now: set up again
    calls = log.read_text().splitlines()
    assert f"-m pip install -q --retries 5 {_pins()}" in calls and not any("--index-url" in c for c in calls)


def test_setup_as_non_root_without_turbojpeg_stops_before_making_the_venv(fakes, tmp_path):
    hide_turbojpeg(fakes)
    venv = tmp_path / "venv"
    res = run([SETUP], f"{fakes}:{os.environ['PATH']}", VENV=str(venv))
    assert res.returncode == 1 and "sudo apt-get install -y libturbojpeg0-dev" in res.stderr
    assert not venv.exists()


# ---------------------------------------------------------------------------- Fashion-MNIST lookup
def idx_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in IDX_FILES:
        (path / name).write_bytes(b"")
    return path


@pytest.fixture
def no_dataset(tmp_path, monkeypatch) -> Path:
    """No Debian folder, no $FASHION_MNIST_DIR; returns the download root (empty)."""
    monkeypatch.setattr(imagefolder, "FASHION_MNIST_DIR", str(tmp_path / "not-installed"))
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    return tmp_path / "data"


class FakeFashionMNIST:
    """torchvision.datasets.FashionMNIST's download, without the network: writes the four files."""
    calls: list = []

    def __init__(self, root, train=True, download=False):
        FakeFashionMNIST.calls.append((root, download))
        idx_folder(Path(root) / "FashionMNIST" / "raw")


@pytest.mark.filterwarnings("ignore")
def test_lookup_order_flag_then_env_then_debian_then_download(no_dataset, tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    FakeFashionMNIST.calls = []
    raw = no_dataset / "FashionMNIST" / "raw"
    # 4. nothing installed or given: torchvision downloads into the data folder (with download=True)
    assert fashion_mnist_source(download_root=no_dataset) == raw
    assert FakeFashionMNIST.calls == [(str(no_dataset), True)]
    assert fashion_mnist_source(download_root=no_dataset) == raw and len(FakeFashionMNIST.calls) == 1  # cached
    # 3. Debian's folder comes before the download
    debian = idx_folder(tmp_path / "debian")
    monkeypatch.setattr(imagefolder, "FASHION_MNIST_DIR", str(debian))
    assert fashion_mnist_source(download_root=no_dataset) == debian
    # 2. $FASHION_MNIST_DIR before Debian's folder
    env = idx_folder(tmp_path / "env")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(env))
    assert fashion_mnist_source(download_root=no_dataset) == env
    # 1. a folder given on the command line before all
    flag = idx_folder(tmp_path / "flag")
    assert fashion_mnist_source(flag, download_root=no_dataset) == flag
    # a given folder is never skipped over: a wrong one is an error
    with pytest.raises(ConfigError, match="does not hold the four idx files"):
        fashion_mnist_source(tmp_path / "empty", download_root=no_dataset)


def test_offline_and_absent_is_one_line_naming_all_three_ways(no_dataset, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets

    class Offline:
        def __init__(self, root, train=True, download=False):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://x/, got:\n"
                               + str(URLError("[Errno -3] Temporary failure in name resolution")))

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(ConfigError) as err:
        fashion_mnist_source(download_root=no_dataset)
    msg = str(err.value)
    assert "\n" not in msg
    for way in ("dataset-fashion-mnist", "FASHION_MNIST_DIR=DIR", "repro data write --source fashion-mnist DIR",
                "torchvision can download it", "Temporary failure in name resolution"):
        assert way in msg


def test_download_checks_md5_with_torchvision(no_dataset, monkeypatch):
    """The real torchvision downloader, fed wrong bytes instead of the network: it refuses them."""
    from torchvision.datasets import utils

    monkeypatch.setattr(utils, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(utils, "_urlretrieve", lambda url, path, *a, **k: Path(path).write_bytes(b"not the data"))
    with pytest.raises(ConfigError, match="corrupted"):
        fashion_mnist_source(download_root=no_dataset)


def test_cli_write_without_any_source_is_one_line_and_writes_nothing(no_dataset, monkeypatch, tmp_path, capsys):
    import torchvision.datasets

    class Offline:
        def __init__(self, *a, **k):
            raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    monkeypatch.setattr(imagefolder, "FASHION_MNIST_DOWNLOAD_ROOT", str(no_dataset))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["data", "write", "--source", "fashion-mnist", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FASHION_MNIST_DIR" in err and "network unreachable" in err
    assert not out.exists()
