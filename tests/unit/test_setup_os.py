"""scripts/setup-os.sh, the OS set-up of `make demo` and `make test`, against fake apt-get, sudo,
id, java, wrk, nginx and python3 on a PATH of its own: the real system is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash") or "/bin/bash"
FASHION = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"]
FASHION.append("t10k-labels-idx1-ubyte.gz")
# the real tools the script (and check-java.sh) call; everything else on its PATH is a fake
TOOLS = ["bash", "env", "true", "dirname", "sed", "head", "tail", "mktemp", "rm", "mkdir", "ln"]
UPDATE = "apt-get update -qq"


class Machine:
    """A copy of the two scripts, and a bin/ of fakes that log their calls to calls.log."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        (tmp / "repo" / "scripts").mkdir(parents=True)
        for name in ("setup-os.sh", "check-java.sh"):
            shutil.copy2(ROOT / "scripts" / name, tmp / "repo" / "scripts" / name)
        self.fashion = tmp / "datasets" / "fashion-mnist"
        self.log = tmp / "calls.log"
        self.log.touch()
        for tool in TOOLS:
            real = shutil.which(tool)
            assert real, f"{tool} not found"
            (self.bin / tool).symlink_to(real)
        self.shim("id", 'echo "${FAKE_UID:-1000}"')
        self.shim("python3", "exit 0")
        # what apt-get "installs" (links into bin/), so that the script's check afterwards passes
        self.store = tmp / "store"
        self.store.mkdir()
        self.shim("java", "echo 'openjdk version \"17.0.15\" 2025-04-15' >&2", self.store)
        self.shim("wrk", "exit 0", self.store)
        self.shim("nginx", "exit 0", self.store)
        self.shim("python3", "exit 0", self.store)
        self.shim(
            "apt-get",
            f"""echo "apt-get $* uid=$(id -u) DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}}" >> "{self.log}"
[ -z "${{FAKE_APT_FAILS:-}}" ] || {{ echo "E: Unable to locate package"; exit 100; }}
[ "$1" = install ] && [ -z "${{FAKE_APT_NOOP:-}}" ] || exit 0
for p in "$@"; do case "$p" in
  *jre-headless) ln -sf "{self.store}/java" "{self.bin}/java" ;;
  wrk) ln -sf "{self.store}/wrk" "{self.bin}/wrk" ;;
  nginx) ln -sf "{self.store}/nginx" "{self.bin}/nginx" ;;
  python3-venv) ln -sf "{self.store}/python3" "{self.bin}/python3" ;;
  dataset-fashion-mnist) mkdir -p "{self.fashion}"; for f in {" ".join(FASHION)}; do : > "{self.fashion}/$f"; done ;;
esac; done""",
        )

    def shim(self, name: str, body: str, folder: Path | None = None) -> None:
        path = (folder or self.bin) / name
        path.unlink(missing_ok=True)
        path.write_text(f"#!{BASH}\n{body}\n")
        path.chmod(0o755)

    def java(self, version: str) -> None:
        self.shim("java", f"echo 'openjdk version \"{version}\" 2024-01-16' >&2")

    def wrk(self) -> None:
        self.shim("wrk", "exit 0")

    def nginx(self) -> None:
        self.shim("nginx", "exit 0")

    def fashion_data(self, folder: Path | None = None) -> None:
        folder = folder or self.fashion
        folder.mkdir(parents=True, exist_ok=True)
        for name in FASHION:
            (folder / name).touch()

    def sudo(self, passwordless: bool = True) -> None:
        """sudo -n: runs the command as uid 0, or fails as sudo does when it wants a password."""
        ok = 'shift; FAKE_UID=0 exec "$@"' if passwordless else 'echo "sudo: a password is required" >&2; exit 1'
        self.shim("sudo", f'echo "sudo $*" >> "{self.log}"\n[ "$1" = -n ] || exit 1\n{ok}')

    def everything(self) -> None:
        self.java("17.0.15")
        self.wrk()
        self.nginx()
        self.fashion_data()

    def run(self, *needs: str, root: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {"PATH": str(self.bin), "HOME": str(self.tmp), "FASHION_MNIST_DIR": str(self.fashion)}
        # Debian's nginx is in /usr/sbin, off a user's PATH: looked for there too, here in the fake system
        environ["TORCHSHIP_NGINX"] = str(self.tmp / "sbin" / "nginx")
        environ.update({"FAKE_UID": "0"} if root else {})
        environ.update(env)
        script = self.tmp / "repo" / "scripts" / "setup-os.sh"
        return subprocess.run([BASH, str(script), *needs], env=environ, capture_output=True, text=True, timeout=30)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def machine(tmp_path) -> Machine:
    return Machine(tmp_path)


def install_line(*packages: str, uid: int = 0) -> str:
    return f"apt-get install -y --no-install-recommends {' '.join(packages)} uid={uid} DEBIAN_FRONTEND=noninteractive"


@pytest.mark.parametrize("root", [True, False])
def test_all_present_installs_nothing_silently_and_fast(machine, root):
    machine.everything()
    machine.sudo()
    start = time.monotonic()
    result = machine.run("java", "fashion-mnist", "wrk", "nginx", "venv", root=root)
    elapsed = time.monotonic() - start
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert machine.calls() == []  # no apt-get update, not even a sudo probe
    assert elapsed < 1.0


def test_default_needs_are_java_and_fashion(machine):
    machine.java("17.0.15")
    machine.fashion_data()  # no wrk: the default (make demo's) does not want it
    result = machine.run()
    assert (result.returncode, result.stderr) == (0, "")
    assert machine.calls() == []


def test_missing_as_root_one_update_one_install_of_exactly_the_missing(machine):
    machine.fashion_data()
    result = machine.run("java", "fashion-mnist", "wrk", root=True)
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [f"{UPDATE} uid=0 DEBIAN_FRONTEND=", install_line("default-jre-headless", "wrk")]
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "installing with apt-get: default-jre-headless wrk" in result.stderr
    # now all there: the second run is silent and calls nothing
    again = machine.run("java", "fashion-mnist", "wrk", root=True)
    assert (again.returncode, again.stderr) == (0, "") and len(machine.calls()) == 2


def test_not_root_with_passwordless_sudo_goes_through_sudo_n(machine):
    machine.java("17.0.15")
    machine.sudo()
    result = machine.run("java", "fashion-mnist", "wrk")
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [
        "sudo -n true",
        f"sudo -n {UPDATE}",
        f"{UPDATE} uid=0 DEBIAN_FRONTEND=",
        "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends"
        " dataset-fashion-mnist wrk",
        install_line("dataset-fashion-mnist", "wrk"),
    ]
    assert all((machine.fashion / name).is_file() for name in FASHION)


@pytest.mark.parametrize("sudo", ["absent", "wants a password"])
def test_not_root_without_sudo_stops_with_one_line_naming_the_command(machine, sudo):
    machine.java("17.0.15")
    if sudo != "absent":
        machine.sudo(passwordless=False)
    result = machine.run("java", "fashion-mnist", "wrk")
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert (
        "sudo apt-get update && sudo apt-get install -y --no-install-recommends dataset-fashion-mnist wrk" in lines[0]
    )
    assert "Fashion-MNIST" in lines[0] and "wrk" in lines[0]
    assert not any(call.startswith("apt-get") for call in machine.calls())  # nothing half-done


def test_no_apt_get_says_in_one_line_what_is_missing_and_for_what(machine):
    (machine.bin / "apt-get").unlink()
    machine.fashion_data()
    result = machine.run("java", "fashion-mnist", "wrk", root=True)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert (
        "Java 11+ (for TorchServe)" in lines[0] and "FASHION_MNIST_DIR" not in lines[0] and "load generator" in lines[0]
    )
    assert "default-jre-headless wrk" in lines[0] and "no apt-get" in lines[0]
    assert machine.calls() == []


def test_nginx_is_installed_when_missing_and_found_off_the_path(machine):
    result = machine.run("nginx", root=True)
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [f"{UPDATE} uid=0 DEBIAN_FRONTEND=", install_line("nginx")]
    # Debian's /usr/sbin/nginx (not on a user's PATH) counts as present
    (machine.bin / "nginx").unlink()
    sbin = machine.tmp / "sbin"
    sbin.mkdir()
    (sbin / "nginx").symlink_to(machine.store / "nginx")
    again = machine.run("nginx", root=True)
    assert (again.returncode, again.stderr, len(machine.calls())) == (0, "", 2)


def test_java_too_old_is_missing(machine):
    machine.java("1.8.0_392")
    machine.fashion_data()
    result = machine.run("java", "fashion-mnist", root=True)
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [f"{UPDATE} uid=0 DEBIAN_FRONTEND=", install_line("default-jre-headless")]


def test_java_package_can_be_named(machine):
    machine.fashion_data()
    result = machine.run("java", "fashion-mnist", root=True, JAVA_PACKAGE="openjdk-17-jre-headless")
    assert result.returncode == 0, result.stderr
    assert machine.calls()[-1] == install_line("openjdk-17-jre-headless")


def test_java_home_naming_an_old_java_is_said_not_installed_over(machine):
    old = machine.tmp / "jdk8"
    (old / "bin").mkdir(parents=True)
    (old / "bin" / "java").write_text(f"#!{BASH}\necho 'java version \"1.8.0_392\"' >&2\n")
    (old / "bin" / "java").chmod(0o755)
    machine.java("17.0.15")
    machine.fashion_data()
    result = machine.run("java", root=True, JAVA_HOME=str(old))
    assert result.returncode != 0 and machine.calls() == []
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "JAVA_HOME" in lines[0] and "1.8.0_392" in lines[0]


def test_apt_get_failing_fails_with_its_last_lines(machine):
    result = machine.run("wrk", root=True, FAKE_APT_FAILS="1")
    assert result.returncode != 0
    assert "E: Unable to locate package" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: could not install wrk")
    assert len(machine.calls()) == 1  # the update failed: no install tried


def test_installed_but_still_missing_is_an_error(machine):
    result = machine.run("wrk", root=True, FAKE_APT_NOOP="1")
    assert result.returncode != 0
    assert result.stderr.splitlines()[-1] == (
        "error: still not found after installing wrk: wrk (the load generator of bench and tune)"
    )


def test_fashion_already_copied_into_data_needs_no_package(machine):
    machine.fashion_data(machine.tmp / "repo" / "data" / "fashion")
    result = machine.run("fashion-mnist", root=True)
    assert (result.returncode, result.stderr, machine.calls()) == (0, "", [])


def test_python_without_venv_gets_python3_venv(machine):
    machine.shim("python3", "exit 1")  # Debian's python3 without ensurepip
    result = machine.run("venv", root=True)
    assert result.returncode == 0, result.stderr
    assert machine.calls()[-1] == install_line("python3-venv")


def test_unknown_need_is_refused(machine):
    result = machine.run("java", "cuda", root=True)
    assert result.returncode == 2 and "unknown need 'cuda'" in result.stderr and machine.calls() == []


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    ("goal", "needs"),
    [
        ("data", "fashion-mnist"),
        ("unit", "fashion-mnist"),
        ("serve", "java"),
        ("demo", "java fashion-mnist"),
        ("test", "java fashion-mnist wrk nginx"),
        ("integration", "java fashion-mnist wrk nginx"),
        ("bench", "java fashion-mnist wrk nginx"),
    ],
)
def test_make_goals_ask_for_what_they_need(goal, needs, tmp_path):
    """make -n only prints the recipes; .venv is taken as made (VENV=) so venv is not asked for."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    env = {k: v for k, v in os.environ.items() if k not in ("OS_NEEDS", "MAKEFLAGS", "MAKELEVEL")}
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), goal, f"VENV={venv}"], env=env, capture_output=True, text=True, timeout=60
    )
    lines = [line for line in result.stdout.splitlines() if "scripts/setup-os.sh" in line]
    assert lines and lines[0].split("scripts/setup-os.sh")[1].split() == needs.split(), result.stdout
