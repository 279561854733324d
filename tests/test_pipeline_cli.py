"""``flywheel pipeline``: compile reproduces the committed YAML; run/schedule fail in one line (exit 2)."""

import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.cli import main
from flywheel.errors import InputError
from flywheel.cron import check_cron
from flywheel.kubeflow.pipelines import COMPONENT_NAMES

COMPILED = Path(__file__).resolve().parents[1] / "pipelines" / "compiled"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens


def test_compile_reproduces_the_committed_yaml_byte_for_byte(tmp_path):
    # In a process of its own, as a user runs it: in a test worker that has imported torch and MLflow, kfp's
    # inspect.stack() on every task setting makes the same compile take 20 times as long.
    result = subprocess.run([sys.executable, "-m", "flywheel.cli", "pipeline", "compile", "--out-dir", str(tmp_path),
                             "--components-dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert written == ["flywheel.yaml", "flywheel_round.yaml"]
    for name in written:
        assert (tmp_path / name).read_bytes() == (COMPILED / name).read_bytes(), (
            f"pipelines/compiled/{name} is stale: run `flywheel pipeline compile`")
    printed = result.stdout.split()
    assert printed[:2] == [str(tmp_path / "flywheel_round.yaml"), str(tmp_path / "flywheel.yaml")]
    specs = sorted(str(p) for p in (tmp_path / "c").glob("*.yaml"))
    assert sorted(printed[2:]) == specs and len(printed) == 2 + len(COMPONENT_NAMES)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("flywheel: error: ")
    return err


@pytest.mark.parametrize("command", [["run"], ["schedule", "--cron", "0 3 * * *"]])
def test_an_unreachable_host_is_one_line_exit_2(command, capsys):
    assert main(["pipeline", *command, "--host", UNREACHABLE]) == 2
    assert f"{UNREACHABLE}: cannot reach Kubeflow Pipelines" in _one_line_error(capsys)


@pytest.mark.parametrize("cron, message", [
    ("0 3 * *", "expected 5 fields"),
    ("0 24 * * *", "hour field '24': 24 is outside 0-23"),
    ("0 3 * * FUNDAY", "day of week field 'FUNDAY'"),
    ("*/0 3 * * *", "step must be >= 1"),
    ("0 3 ? * *", None),  # '?' is allowed in the day fields only ...
    ("? 3 * * *", "minute field '?' is not a cron field"),
])
def test_a_bad_cron_is_rejected_before_any_network_call(cron, message, capsys):
    code = main(["pipeline", "schedule", "--host", UNREACHABLE, "--cron", cron])
    err = _one_line_error(capsys)
    if message is None:  # a valid expression goes on to the (unreachable) host
        assert code == 2 and "cannot reach" in err
    else:  # the cron error, not the connection error: the host was never contacted
        assert code == 2 and "--cron: " in err and message in err and "cannot reach" not in err


def test_cron_becomes_kfp_six_field_form():
    assert check_cron("0 3 * * *") == "0 0 3 * * *"
    assert check_cron("*/15 8-18 1,15 JAN-MAR MON-FRI") == "0 */15 8-18 1,15 JAN-MAR MON-FRI"
    with pytest.raises(InputError, match="month field '13'"):
        check_cron("0 0 1 13 *")


@pytest.mark.parametrize("args, message", [
    (["run", "--host", "localhost:8080"], "--host: 'localhost:8080' is not an http(s) URL"),
    (["run", "--host", UNREACHABLE, "--rounds", "0"], "--rounds: must be >= 1, got 0"),
    (["run", "--host", UNREACHABLE, "--shards", "0"], "--shards: must be >= 1, got 0"),
    (["run", "--host", UNREACHABLE, "-s", "loop.rounds=0"], "field 'loop.rounds': must be > 0"),
])
def test_bad_arguments_are_one_line_exit_2(args, message, capsys):
    assert main(["pipeline", *args]) == 2
    assert message in _one_line_error(capsys)
