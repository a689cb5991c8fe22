"""The trainer CLI validates every argument before any work: an argparse usage error (exit status 2)
naming the argument, never a traceback; a device or backend this machine lacks is one such error."""
import subprocess
import sys

import pytest
import torch

from actfocus_trainer.cli import main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the argument is valid here")


@pytest.mark.parametrize("argv, name", [
    (["train", "--steps", "-1"], "--steps"),
    (["train", "--steps", "0"], "--steps"),
    (["compare", "--seeds", "0"], "--seeds"),
    (["train", "--eval-episodes", "0"], "--eval-episodes"),
    (["train", "--group-size", "0"], "--group-size"),
    (["train", "--threads", "0"], "--threads"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--temperature", "inf"], "--temperature"),
    (["train", "--steps", "many"], "--steps"),
    (["train", "--reasoning-weight", "-1"], "--reasoning-weight"),
    (["diagnose", "--checkpoint", "/no/such/policy.pt"], "--checkpoint"),
    (["train", "--model", "/no/such/model"], "--model"),
])
def test_bad_arguments_are_usage_errors(argv, name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert name in capsys.readouterr().err


def test_out_naming_a_file_fails_before_training(tmp_path, capsys):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(existing)])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err
    assert existing.read_text() == "keep me"


@pytest.mark.parametrize("argv, name", [
    pytest.param(["train", "--backend", "cuda"], "--backend", marks=NO_CUDA),
    pytest.param(["train", "--device", "cuda"], "--device", marks=NO_CUDA),
    (["train", "--device", "cpu", "--backend", "cuda"], "--backend"),
    (["compare", "--device", "cpu", "--backend", "cuda"], "--backend"),
    (["diagnose", "--device", "nowhere"], "--device"),
])
def test_a_device_or_backend_the_machine_lacks_is_a_one_line_usage_error(argv, name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and name in err, err


@NO_CUDA
def test_train_with_the_cuda_backend_without_cuda_exits_2_without_a_traceback():
    result = subprocess.run([sys.executable, "-m", "actfocus_trainer", "train", "--backend", "cuda"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "--backend cuda" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
