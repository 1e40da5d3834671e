"""The `ssc` group: subcommands are imported only when used, so `ssc --help` starts fast."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from sscjax import __version__
from sscjax.errors import SscError

# command name -> ("module:attribute", one-line help); each module holds one command or group.
COMMANDS = {
    "phantom": ("cli.phantom:phantom", "Generate a synthetic chest-CT cohort with exact ground truth."),
    "lung": ("cli.lung:lung", "Compute a lung mask from a CT scan or slice."),
    "data": ("cli.data:data", "Check, split and import cohorts."),
    "weights": ("cli.weights:weights", "Convert pretrained PyTorch weights to sscjax."),
    "train": ("cli.train:train", "Train the L-Net or the S-Net on a cohort."),
    "levels": ("cli.levels:levels", "Find the five Goh levels in a scan with a trained L-Net."),
    "evaluate": ("cli.evaluate:evaluate", "Agreement statistics: MAE, kappa, ICC, plots."),
    "cascade": ("cli.cascade:cascade", "Score scans end to end: levels, slices, TOT/GG/RET."),
    "explain": ("cli.explain:explain", "Replacement heat maps that explain the S-Net scores."),
    "demo": ("cli.demo:demo", "Run the whole method on a small synthetic cohort."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ssc")
def cli() -> None:
    """Explainable Goh scoring of interstitial lung disease in chest CT.

    Start with `ssc demo`, or `ssc COMMAND --help` for one command.
    """


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2, not a traceback."""
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on read-only checkpoint managers
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except SscError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
