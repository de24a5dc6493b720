"""The locked install (requirements/, docs/install.md): the README's test venv holds exactly requirements-dev.txt, the
app lock is a subset of what the tests ran, each lock agrees with its inputs, and pip check's complaints are exactly
the dependencies the dev lock leaves out on purpose. ``.ci/run`` also builds the README's app venv and checks it
against requirements.txt with the same script."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "requirements"))
import check  # noqa: E402  (requirements/check.py)

DEV = ROOT / "requirements-dev.txt"
APP = ROOT / "requirements.txt"
EXCLUDES_DEV = ROOT / "requirements" / "excludes-dev.txt"


def test_this_venv_is_exactly_the_dev_lock():
    said = check.differences(check.lock_entries(DEV), check.installed())
    assert said == [], "\n".join(said)


def test_pip_check_names_only_the_deliberate_exclusions():
    output = check.run_pip_check()
    assert check.pip_check_complaints(output, check.excluded(EXCLUDES_DEV)) == []
    # and each exclusion is really left out (a listed package that got installed would be a stale line)
    have = check.installed()
    assert [name for name in check.excluded(EXCLUDES_DEV) if name in have] == []


def test_the_app_installs_what_the_tests_ran():
    """Every package of the app lock that applies here is in the dev lock at a version that meets the app's pin
    (torch: the app's ==2.13.0 is met by the dev lock's 2.13.0+cpu, the same wheel on this machine)."""
    app, dev = check.lock_entries(APP), check.lock_entries(DEV)
    have_from_dev = {name: dev[name] for name in app if name in dev}
    assert check.differences(app, have_from_dev) == []
    assert dev["torch"].endswith("+cpu") and app["torch"] == "2.13.0"


@pytest.mark.parametrize("lock, inputs", [(APP, "app.in"), (DEV, "dev.in")])
def test_locks_agree_with_their_inputs(lock, inputs):
    """A direct pin edited in an input and not regenerated shows here: the lock must hold every input's pin."""
    pins, locked = check.input_pins(ROOT / "requirements" / inputs), check.lock_entries(lock)
    wrong = {name: (version, locked.get(name)) for name, version in pins.items()
             if locked.get(name, "").split("+")[0] != version}
    assert wrong == {}
    assert "bash requirements/lock.sh" in lock.read_text().splitlines()[1]  # written by the resolver, not by hand


def test_the_dev_lock_hashes_every_package_and_pins_the_filelock_lmms_eval_needs():
    text = DEV.read_text()
    blocks = [b for b in text.replace("\\\n", " ").splitlines() if b and not b.startswith(("#", " "))]
    assert blocks and all("--hash=sha256:" in b for b in blocks)
    filelock = check.lock_entries(DEV)["filelock"]
    assert int(filelock.split(".")[0]) < 4  # lmms-eval 0.7.3 imports filelock._api
    import filelock._api  # noqa: F401


def test_differences_name_each_kind_of_mismatch():
    pins = {"a": "1.0", "b": "2.0", "torch": "2.13.0"}
    have = {"a": "1.0", "b": "2.1", "c": "3", "pip": "23.2", "prunescope": "0.1.0", "torch": "2.13.0+cpu"}
    assert check.differences(pins, have) == ["b 2.1 is installed, the lock says ==2.0",
                                             "c 3 is installed but the lock does not name it"]
    assert check.differences({"d": "1"}, {}) == ["d==1 is locked but not installed"]


def test_pip_check_lines_outside_the_excludes_are_reported():
    output = ("lmms-eval 0.7.3 requires torchvision, which is not installed.\n"
              "lmms-eval 0.7.3 requires wandb, which is not installed.\n"
              "gradio 6.31.0 has requirement numpy<3, but you have numpy 3.0.\n")
    assert check.pip_check_complaints(output, {"torchvision"}) == [
        "lmms-eval 0.7.3 requires wandb, which is not installed.",
        "gradio 6.31.0 has requirement numpy<3, but you have numpy 3.0."]
    assert check.pip_check_complaints("No broken requirements found.\n", set()) == []


def test_unpinned_lock_lines_are_refused(tmp_path):
    bad = tmp_path / "lock.txt"
    bad.write_text("numpy>=2\n")
    with pytest.raises(ValueError, match="not pinned"):
        check.lock_entries(bad)
