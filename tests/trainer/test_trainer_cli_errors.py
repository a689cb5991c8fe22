"""The trainer CLI validates every argument before any work: an argparse usage error (exit status 2)
naming the argument, never a traceback (issue: bad input never gives garbage)."""
import pytest

from actfocus_trainer.cli import main


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
