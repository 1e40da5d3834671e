"""The `ssc` group: subcommands are imported only when used, so `ssc --help` starts fast."""

from __future__ import annotations

import importlib
import logging
import sys
import warnings

import click

from sscjax import __version__
from sscjax.errors import SscError

# command name -> ("module:attribute", one-line help); each module holds one command or group.
COMMANDS = {
    "phantom": ("sscjax.cli.phantom:phantom", "Generate a synthetic chest-CT cohort with exact ground truth."),
    "lung": ("sscjax.cli.lung:lung", "Compute a lung mask from a CT scan or slice."),
    "data": ("sscjax.cli.data:data", "Check, split and import cohorts."),
    "weights": ("sscjax.cli.weights:weights", "Convert pretrained PyTorch weights to sscjax."),
    "train": ("sscjax.cli.train:train", "Train the L-Net or the S-Net on a cohort."),
    "levels": ("sscjax.cli.levels:levels", "Find the five Goh levels in a scan with a trained L-Net."),
    "evaluate": ("sscjax.cli.evaluate:evaluate", "Agreement statistics: MAE, kappa, ICC, plots."),
    "cascade": ("sscjax.cli.cascade:cascade", "Score scans end to end: levels, slices, TOT/GG/RET."),
    "explain": ("sscjax.cli.explain:explain", "Replacement heat maps that explain the S-Net scores."),
    "report": ("sscjax.cli.report:report", "HTML report pages of scored scans and of the cohort."),
    "demo": ("sscjax.cli.demo:demo", "Run the whole method on a small synthetic cohort."),
}


# Their notes (orbax on read-only checkpoint managers, asyncio on the reads orbax abandons when a checkpoint is
# corrupt) are noise to a user; what matters reaches the user as an exception.
LIBRARY_LOGGERS = ("absl", "asyncio", "jax", "orbax")


def quiet_libraries() -> None:
    """Keep the libraries' notes off the user's terminal: their log lines below CRITICAL, Python warnings
    (numpy RuntimeWarnings, jax's) unless asked for with `python -W` / PYTHONWARNINGS, and the exceptions that
    tensorstore's callbacks raise after orbax gave up on a corrupt checkpoint (reported as one ModelError)."""
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if not sys.warnoptions:
        warnings.simplefilter("ignore")
    sys.unraisablehook = _drop_closed_loop


def _drop_closed_loop(unraisable) -> None:
    """sys.unraisablehook: drop RuntimeError('Event loop is closed') from reads that finished after their asyncio
    loop ended; report any other exception as Python does."""
    if not (unraisable.exc_type is RuntimeError and "Event loop is closed" in str(unraisable.exc_value)):
        sys.__unraisablehook__(unraisable)


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
    quiet_libraries()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.BadParameter as e:  # a missing or unusable file or value: the one line that names it
        click.echo(f"Error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except SscError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
