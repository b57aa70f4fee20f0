"""``python -m unipercept.train`` as a Hydra application over the packaged configs.

Hydra gives the command its ``--help`` (the config groups), ``--cfg job|hydra|all``, ``--info``,
``-m`` sweeps, run dirs and launcher plugins. Around ``@hydra.main`` this module adds what a
training command needs:

* a pre-flight (:mod:`unipercept.train_jobs`): before Hydra starts, every job (the run, or each
  job of a basic sweep) is composed and checked as ``run`` checks a config (a sweep's data read
  too), so that a config error is one line and exit code 2 before any folder is made or any
  job has trained (Hydra would exit with 1, add a hint about ``HYDRA_FULL_ERROR``, and meet a
  bad sweep job only when its turn comes). Jobs that a launcher runs elsewhere (a SLURM
  cluster) have their device and data checked where they run;
* ``output_dir`` is the job's folder: ``hydra.run.dir`` follows ``output_dir``, and a sweep's
  job writes to ``hydra.sweep.dir/<job number>``;
* under ``torchrun`` every process takes rank 0's run dir (``${now:...}`` can differ by a second
  between processes), and only rank 0 writes ``.hydra/`` and the log file;
* a job that ``run`` stops for its config (data that cannot be read, a resume without a
  checkpoint) leaves nothing behind: the folders and files this command made for it go again,
  unless something else is in them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from unipercept import train_jobs

if TYPE_CHECKING:
    import argparse

logger = logging.getLogger("unipercept.train")

PROGRAM = "python -m unipercept.train"


class JobConfigError(SystemExit):
    """A job that ``run`` refused for its config: exit code 2, and the line ``main`` logs.

    A SystemExit, so that it passes through Hydra (which reports an Exception its own way, with
    exit code 1) and, in a sweep, stops the jobs after it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


# Whether main() runs the app in this process (and reports a job's config error itself); a
# launcher's job in another process (a SLURM job) reports its own.
_in_main = False


@dataclass
class _Plan:
    """What the pre-flight leaves to Hydra: its command line, and the folders it will make
    (removed again, when empty, after a job fails for its config)."""

    command: list[str]
    new_folders: list[Path] = field(default_factory=list)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the Hydra app with ``argv`` (``sys.argv[1:]`` by default) as its command line.

    Returns:
        The exit code: 0 after training (or ``--help``, ``--cfg``, ``--info``), 2 after a config
        error (logged as one line, nothing left on disk), Hydra's own code otherwise.
    """
    from unipercept.entry import shadowed_package

    arguments = list(sys.argv[1:] if argv is None else argv)
    # The pre-flight's line needs a handler where the caller has none (Hydra sets up its own).
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ours = [handler for handler in root.handlers if handler not in before]
    if (problem := shadowed_package()) is not None:
        logger.error("error: %s", problem)
        return 2
    from unipercept.allocator import configure_malloc

    try:
        configure_malloc()  # as the other commands' entry.start: freed memory kept for reuse
    except ValueError as error:
        logger.error("error: %s", error)
        return 2
    try:
        plan = _preflight(arguments)
    except _Done as done:
        return done.code
    except Exception as error:
        if (message := _config_error(error)) is None:
            raise
        logger.error("error: %s", message)
        return 2
    global _in_main
    code, failure = 0, None
    with _command_line([PROGRAM, *plan.command]), _logging_restored(set_aside=ours):
        _in_main = True
        try:
            _app()()
        except JobConfigError as error:
            code, failure = 2, error.message
        except SystemExit as exit_:  # --help, or an error Hydra reported itself
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        finally:
            _in_main = False
    if failure is not None:
        _remove_empty(plan.new_folders, made_here=True)
        # Logged after Hydra's logging is undone, so that it reaches the caller's handlers.
        logger.error("error: %s", failure)
    return code


def train_job(cfg: DictConfig) -> None:
    """Hydra's task function: trains one job in its folder.

    Raises:
        JobConfigError: ``run`` stopped for the config before training.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from unipercept.train import ConfigurationError, run

    hydra_cfg = HydraConfig.get()
    log = _log_file(hydra_cfg)
    log_existed = log is not None and log.exists()
    with open_dict(cfg):
        cfg.output_dir = hydra_cfg.runtime.output_dir  # the folder Hydra made, absolute
    try:
        OmegaConf.resolve(cfg)
        run(cfg)
    except (ConfigurationError, OmegaConfBaseException) as error:
        _remove_what_hydra_wrote(hydra_cfg, None if log_existed else log)
        message = train_jobs.one_line(error)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            message = f"job #{hydra_cfg.job.num}: {message}"
        if not _in_main:
            logger.error("error: %s", message)
        raise JobConfigError(message) from None


def _app() -> Any:
    """The ``@hydra.main`` app, made when called: decorating sets Hydra's version base, which
    importing this module must not do."""
    import hydra

    return hydra.main(
        config_path=train_jobs.CONFIG_PATH, config_name=train_jobs.CONFIG_NAME, version_base="1.3"
    )(train_job)


class _Done(Exception):
    """The command finished while its arguments were read (``--version``)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _UsageError(Exception):
    """A command line that Hydra's parser refuses."""


def _parse(arguments: list[str]) -> argparse.Namespace:
    """``arguments`` read by Hydra's own parser, a refusal raised as one line."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.prog = PROGRAM

    def error(message: str) -> None:  # instead of argparse's usage block
        raise _UsageError(f"{message} (see --help)")

    parser.error = error  # type: ignore[method-assign]
    try:
        return parser.parse_args(arguments)
    except SystemExit as exit_:  # --version, printed
        raise _Done(int(exit_.code or 0)) from None


def _preflight(arguments: list[str]) -> _Plan:
    """Composes and checks what the command will run, before Hydra runs it.

    Raises:
        ConfigurationError, HydraException, OmegaConfBaseException, _UsageError: a config or
            command-line error (one line).
    """
    from hydra.core.global_hydra import GlobalHydra

    from unipercept.train import ConfigurationError

    args = _parse(arguments)
    if args.experimental_rerun is not None:
        raise ConfigurationError(
            "--experimental-rerun is not supported: it unpickles a file, and a run folder is "
            "data; rerun with the overrides in <run dir>/.hydra/overrides.yaml"
        )
    if args.shell_completion:
        return _Plan(arguments)
    commands = args.run + args.multirun + (args.cfg is not None) + (args.info is not None)
    if commands > 1:
        raise ConfigurationError("give only one of --run, --multirun, --cfg and --info")
    if args.resolve and args.cfg is None and not args.help:
        raise ConfigurationError("--resolve goes with --cfg or --help")
    hydra = train_jobs.hydra_for(args.config_path, args.config_dir)
    try:
        if args.help or args.hydra_help or args.info is not None or args.cfg is not None:
            return _Plan(_shown(hydra, args, arguments))
        return _planned_run(hydra, args, arguments)
    finally:
        GlobalHydra.instance().clear()


def _shown(hydra: Any, args: argparse.Namespace, arguments: list[str]) -> list[str]:
    """Checks that ``--help``, ``--info`` or ``--cfg`` composes; returns the command line, with
    ``~stage`` for ``--help``/``--info`` without a stage (the groups and flags need none)."""
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode

    config_name = args.config_name or train_jobs.CONFIG_NAME
    if args.hydra_help and not args.help:  # Hydra's own help composes Hydra's config alone
        config_name = None
    extra = []
    try:
        job = hydra.compose_config(config_name, args.overrides, RunMode.RUN)
    except ConfigCompositionException as error:
        if args.cfg is not None or not str(error).startswith("You must specify 'stage'"):
            raise
        extra.append("~stage")
        job = hydra.compose_config(config_name, [*args.overrides, *extra], RunMode.RUN)
    if args.resolve:
        train_jobs.resolved_task(job, str(OmegaConf.select(job, "hydra.run.dir")))
    return train_jobs.insert_overrides(arguments, args.overrides, extra)


def _planned_run(hydra: Any, args: argparse.Namespace, arguments: list[str]) -> _Plan:
    """Composes and checks every job of a run or sweep, and pins its folder: the one resolved
    here (Hydra composes again, and ``${now:...}`` may have moved on), under torchrun rank 0's
    (other ranks also write no ``.hydra/`` and no log file)."""
    from hydra.types import RunMode

    from unipercept.train import ConfigurationError

    config_name = args.config_name or train_jobs.CONFIG_NAME
    overrides = list(args.overrides)
    mode = hydra.get_mode(config_name, overrides)
    if mode is None:  # as @hydra.main: the mode is the config's, else the command line's
        mode = RunMode.MULTIRUN if args.multirun else RunMode.RUN
        overrides.append(f"hydra.mode={mode.name}")
    multirun = args.multirun or mode == RunMode.MULTIRUN
    jobs = train_jobs.compose_jobs(hydra, config_name, overrides, multirun)
    extra = []
    world_size, rank = train_jobs.world(os.environ)
    if world_size > 1:
        # Every rank composed the same jobs: they all take rank 0's folder, not their clock's.
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            jobs.folder = train_jobs.shared_run_dir(jobs.folder, os.environ)
        elif not _gives_folder(args.overrides, multirun):
            raise ConfigurationError(
                f"output_dir: {world_size} processes not started by torchrun cannot agree on a "
                "dated run dir; launch with torchrun, or give them all output_dir=<folder> "
                "(hydra.sweep.dir=<folder> with -m)"
            )
        if rank != 0:
            extra += ["hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]"]
    extra.append(f"{jobs.key}={train_jobs.quoted(jobs.folder)}")
    read: set[str] = set()
    for job in jobs.jobs:
        try:
            task = train_jobs.resolved_task(job.config, jobs.folder_of(job))
            train_jobs.check(task, here=jobs.here)
            # A run's own job reads its data before any work, and says so in one line; a
            # sweep's are read here, on this machine, before the first job starts.
            if multirun and jobs.here:
                train_jobs.check_data(task, os.environ, read)
        except ConfigurationError as error:
            if not job.label:
                raise
            raise ConfigurationError(f"{job.label}: {error}") from error
    folders = [jobs.folder, *(jobs.folder_of(job) for job in jobs.jobs)]
    return _Plan(
        train_jobs.insert_overrides(arguments, args.overrides, extra),
        train_jobs.new_folders(folders),
    )


def _gives_folder(overrides: list[str], multirun: bool) -> bool:
    """Whether the command line names the run's folder (the sweep's with ``-m``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = {"hydra.sweep.dir"} if multirun else {"output_dir", "hydra.run.dir"}
    return any(o.key_or_group in keys for o in OverridesParser.create().parse_overrides(overrides))


def _config_error(error: Exception) -> str | None:
    """The line to report for a config or command-line error; None for anything else."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from unipercept.train import ConfigurationError

    if isinstance(error, ConfigurationError | HydraException | OmegaConfBaseException):
        return train_jobs.one_line(error)
    if isinstance(error, _UsageError):
        return str(error)
    return None


def _log_file(hydra_cfg: DictConfig) -> Path | None:
    """The file Hydra's job logging writes to, if it writes one."""
    handlers = OmegaConf.select(hydra_cfg, "job_logging.handlers", default=None) or {}
    for name in OmegaConf.select(hydra_cfg, "job_logging.root.handlers", default=None) or []:
        filename = handlers.get(name, {}).get("filename")
        if filename is not None:
            return Path(str(filename))
    return None


def _remove_what_hydra_wrote(hydra_cfg: DictConfig, log: Path | None) -> None:
    """Removes the job's ``.hydra/`` files and ``log`` (a log the job created), then the job's
    folders if that left them empty."""
    output = Path(hydra_cfg.runtime.output_dir)
    written = [] if log is None else [log]
    if hydra_cfg.output_subdir is not None:
        saved = output / str(hydra_cfg.output_subdir)
        written += [saved / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    root = logging.getLogger()
    for handler in list(root.handlers):  # the log's handler lets go of it first
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) in written:
            root.removeHandler(handler)
            handler.close()
    for path in written:
        path.unlink(missing_ok=True)
    _remove_empty([path.parent for path in written if path.parent != output] + [output])


def _remove_empty(folders: list[Path], *, made_here: bool = False) -> None:
    """Removes each folder, deepest first, that holds nothing; with ``made_here`` (folders
    this command made) also one that holds only the ``multirun.yaml`` Hydra writes into a
    sweep's folder before its first job."""
    for folder in sorted(set(folders), key=lambda f: len(f.parts), reverse=True):
        with contextlib.suppress(OSError):  # gone already, or someone's files are in it
            if made_here and [p.name for p in folder.iterdir()] == ["multirun.yaml"]:
                (folder / "multirun.yaml").unlink()
            folder.rmdir()


@contextlib.contextmanager
def _command_line(argv: list[str]) -> Iterator[None]:
    """``sys.argv`` for ``@hydra.main``, which reads it."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def _logging_restored(set_aside: list[logging.Handler]) -> Iterator[None]:
    """Undoes Hydra's logging configuration afterwards (its file handlers closed), so that a
    caller of ``main`` has its own handlers back; ``set_aside`` are off meanwhile (``--info``
    adds Hydra's handler beside those there, which would print every line twice)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for handler in set_aside:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
