"""cloudweave installs two top-level import names, `cloudweave` and `controller` (the Ryu-style entry point);
the traffic engineer and the test bed live under `cloudweave`, so a user's `te.py` or `testbed.py` in the
working directory shadows nothing."""

import subprocess
import sys


def test_a_stray_te_or_testbed_module_in_the_working_directory_breaks_nothing(tmp_path):
    for name in ("te.py", "testbed.py"):
        (tmp_path / name).write_text("raise SystemExit('the stray module was imported')\n")
    run = subprocess.run([sys.executable, "-c", "import flows.compile, controller.te_loop, cloudweave.testbed.cli, "
                          "cloudweave.te.engine, cloudweave.tm"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_the_old_top_level_names_are_not_installed():
    run = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('te'), "
                          "u.find_spec('testbed'))"], cwd="/", capture_output=True, text=True)
    assert run.stdout.split() == ["None", "None"], run.stdout + run.stderr
