"""cloudweave installs two top-level import names, `cloudweave` and `controller` (the Ryu-style entry point);
the compiler, the traffic engineer and the test bed live under `cloudweave`, so a user's `flows.py`, `te.py`
or `testbed.py` in the working directory shadows nothing. Installed from a wheel (not editable), the commands
and the test bed's own processes work from inside the checkout, whose `cloudweave/` folder does not hold
`cloudweave.flows` and `cloudweave.testbed` (they are `flows/` and `mininet/testbed/`, mapped at install)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from testkit.harness import ROOT


def test_a_stray_flows_te_or_testbed_module_in_the_working_directory_breaks_nothing(tmp_path):
    for name in ("flows.py", "te.py", "testbed.py"):
        (tmp_path / name).write_text("raise SystemExit('the stray module was imported')\n")
    run = subprocess.run([sys.executable, "-c", "import cloudweave.flows.compile, controller.te_loop, "
                          "cloudweave.testbed.cli, cloudweave.te.engine, cloudweave.cli.tm"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_the_old_top_level_names_are_not_installed():
    run = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('te'), "
                          "u.find_spec('testbed'), u.find_spec('flows'))"], cwd="/", capture_output=True, text=True)
    assert run.stdout.split() == ["None", "None", "None"], run.stdout + run.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[str, str]:
    """A fresh virtualenv holding the wheel built from this checkout (dependencies from this environment):
    (its python, its site-packages)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy of the checkout's files: a build writes build/ and *.egg-info where it runs
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if os.path.exists(os.path.join(ROOT, name)):
            os.makedirs(src / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"),
                            str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp / "dist").glob("cloudweave-*.whl")
    top = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"cloudweave", "controller"}, top
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies from this environment (a path entry: its own .pth files, the editable finder among them,
    # are not run); cloudweave itself only from the wheel.
    with open(os.path.join(site, "deps.pth"), "w") as fh:
        fh.write(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return python, site


def in_checkout(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_wheel_runs_the_commands_and_the_test_beds_processes_from_inside_the_checkout(installed):
    python, site = installed
    checked = in_checkout(os.path.join(os.path.dirname(python), "cloudweave"), "check", "topologies/two-sites.yaml")
    assert checked.returncode == 0 and "valid" in checked.stdout, checked.stderr
    # The test bed starts its keeper, probes and loads as cloudweave.launch says: found from the checkout too.
    keeper = in_checkout(python, "-P", "-c", "import subprocess, sys; from cloudweave.launch import PYTHON_M; "
                         "sys.exit(subprocess.run([*PYTHON_M, 'cloudweave.testbed.keeper', '--help']).returncode)")
    assert keeper.returncode == 0 and "testbed-keeper" in keeper.stdout, keeper.stderr
    origin = in_checkout(python, "-P", "-c", "import cloudweave.flows; print(cloudweave.flows.__file__)")
    assert origin.returncode == 0 and origin.stdout.startswith(site), origin.stdout + origin.stderr
    # What the launcher avoids: a plain `python -m` from the checkout takes the source tree's partial package.
    plain = in_checkout(python, "-m", "cloudweave.testbed.keeper", "--help")
    assert plain.returncode != 0 and "No module named 'cloudweave.testbed'" in plain.stderr, plain.stderr


def test_each_layer_imports_only_the_layers_below_it(installed, tmp_path):
    """setup.cfg's import-linter contracts, on the installed layout (the source tree maps two packages in
    from elsewhere, which the linter's walk of the tree would not find). Function-level imports count."""
    python, _ = installed
    argv = [python, "-P", "-c", "import sys; from importlinter.cli import lint_imports_command; "
            "sys.argv = ['lint-imports', '--no-cache', '--config', sys.argv[1]]; lint_imports_command()"]
    kept = subprocess.run([*argv, os.path.join(ROOT, "setup.cfg")], cwd=tmp_path, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "2 kept, 0 broken" in kept.stdout, kept.stdout
    # The contract sees the imports: the compiler reads the model, so the model cannot sit above it.
    reversed_cfg = tmp_path / "reversed.cfg"
    reversed_cfg.write_text("[importlinter]\nroot_packages =\n    cloudweave\n\n[importlinter:contract:r]\n"
                            "name = r\ntype = layers\nlayers =\n    cloudweave.config\n    cloudweave.flows\n")
    broken = subprocess.run([*argv, str(reversed_cfg)], cwd=tmp_path, capture_output=True, text=True)
    assert broken.returncode != 0 and "cloudweave.flows.compile -> cloudweave.config" in broken.stdout, broken.stdout


def test_benchmarks_and_tests_share_testkit_and_never_import_each_other():
    """What both need lives in testkit/; a benchmark importing a test module (or the reverse) would tie the two
    together again (six bench files imported tests/ before)."""
    import ast

    found = []
    for folder, forbidden in (("bench", "tests"), ("tests", "bench"), ("testkit", "tests"), ("testkit", "bench")):
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(directory, name)
                for node in ast.walk(ast.parse(open(path).read())):
                    modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                        [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                    found += [f"{os.path.relpath(path, ROOT)}: {m}" for m in modules
                              if m == forbidden or m.startswith(forbidden + ".")]
    assert found == []
