"""The `ssc` command line as a whole: --help everywhere, --version, fast start, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner
from sscjax.cli.main import COMMANDS, cli

from sscjax import __version__


def _walk(command: click.Command, path: list[str]):
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from _walk(command.get_command(ctx, name), [*path, name])


def test_every_command_and_subcommand_has_help():
    seen = []
    for path, command in _walk(cli, []):
        result = CliRunner().invoke(cli, [*path, "--help"], prog_name="ssc")
        assert result.exit_code == 0, (path, result.output)
        assert result.output.startswith(f"Usage: {' '.join(['ssc', *path])}")
        assert command.help, path
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and param.name not in ("help", "version"):
                assert param.help, (path, param.name)
        seen.append(" ".join(path))
    assert set(COMMANDS) <= set(seen)
    assert {
        "train lnet",
        "train snet",
        "evaluate lnet",
        "evaluate snet",
        "explain calibrate",
        "data check",
        "data split",
        "data import-goh",
        "weights convert",
    } <= set(seen)


def test_version_and_unknown_command():
    assert CliRunner().invoke(cli, ["--version"]).output.strip() == f"ssc, version {__version__}"
    result = subprocess.run(["ssc", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2 and "No such command 'frobnicate'" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_starts_without_importing_jax():
    code = (
        "import sys; from sscjax.cli.main import main; sys.argv = ['ssc', '--help'];\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'jax' not in sys.modules, 'jax imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "cascade" in result.stdout and "demo" in result.stdout


def test_user_mistakes_are_one_line_with_exit_code_2(tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n")
    for args, message in [
        (["lung", str(tmp_path / "missing.mha"), "-o", str(tmp_path / "m.mha")], "does not exist"),
        (["cascade", "--scan", str(photo), "--levels", "5,4,3,2,1"], "not a supported scan format"),
        (["data", "check", str(tmp_path)], "problem"),
    ]:
        result = subprocess.run(["ssc", *args], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr.lower(), (args, result.stderr)
        assert "Traceback" not in result.stderr
