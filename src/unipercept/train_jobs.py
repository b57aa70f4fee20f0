"""The jobs a ``python -m unipercept.train`` command will run, composed and checked before Hydra
runs them, and the run dir every torchrun process agrees on.

Hydra composes a run's config when it starts it, and a sweep's job when its turn comes: a bad
value in the last job of a sweep is found after the others have trained. Here the jobs are
composed the way ``@hydra.main`` and its basic launcher compose them (the same search path,
overrides, job numbers and folders) and checked as ``unipercept.train.run`` checks a config
before any work.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

if TYPE_CHECKING:
    from hydra._internal.hydra import Hydra

CONFIG_PATH = "pkg://unipercept.conf"
CONFIG_NAME = "train"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# The key under which rank 0 publishes its run dir in torchrun's store.
RUN_DIR_KEY = "unipercept.train/run_dir"
STORE_TIMEOUT = timedelta(minutes=5)


@dataclass
class Job:
    """One job as Hydra will run it.

    Attributes:
        config: its composed config, ``hydra`` node included.
        subdir: its folder inside the sweep's (``hydra.sweep.subdir``); None for a single run.
        label: what sets it apart from the other jobs of its sweep (``"stage.lr=0.0002"``).
    """

    config: DictConfig
    subdir: str | None = None
    label: str = ""


@dataclass
class Jobs:
    """The jobs of a command and the Hydra key that places them.

    Attributes:
        jobs: every job known in advance (none for a sweeper that picks jobs as it goes).
        key: ``hydra.run.dir`` for a run, ``hydra.sweep.dir`` for a sweep.
        folder: that key's value: the run's folder, or the sweep's.
        here: whether the jobs run on this machine (a run, or Hydra's basic launcher); a
            launcher's jobs elsewhere (a SLURM cluster) may have devices and data this
            machine has not.
    """

    jobs: list[Job]
    key: str
    folder: str
    here: bool = True

    def folder_of(self, job: Job) -> str:
        return self.folder if job.subdir is None else os.path.join(self.folder, job.subdir)


def hydra_for(config_path: str | None, config_dir: str | None) -> Hydra:
    """A Hydra instance with the search path ``@hydra.main`` builds from these flags
    (``--config-path``, ``--config-dir``); the caller clears ``GlobalHydra`` afterwards."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.errors import SearchPathException

    search_path = create_automatic_config_search_path(None, None, config_path or CONFIG_PATH)
    if config_dir is not None:
        directory = os.path.abspath(config_dir)
        if not os.path.isdir(directory):
            raise SearchPathException(f"--config-dir: {directory} is not a folder")
        search_path.prepend(
            provider="command-line",
            path=f"file://{directory}",
            anchor=SearchPathQuery(provider="schema"),
        )
    return Hydra.create_main_hydra2(task_name="train", config_search_path=search_path)


def compose_jobs(hydra: Hydra, config_name: str, overrides: list[str], multirun: bool) -> Jobs:
    """Every job Hydra will run for these overrides, as its basic launcher composes them.

    Raises:
        ConfigurationError: ``output_dir`` given to a sweep, or a sweep's job that does not
            compose (named by its overrides).
        HydraException, OmegaConfBaseException: the run's (or the sweep's) config does not
            compose.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from unipercept.train import ConfigurationError

    if not multirun:
        job = hydra.compose_config(config_name, overrides, RunMode.RUN)
        return Jobs([Job(job)], "hydra.run.dir", str(OmegaConf.select(job, "hydra.run.dir")))
    master = hydra.compose_config(config_name, overrides, RunMode.MULTIRUN)
    sweep_dir = str(OmegaConf.select(master, "hydra.sweep.dir"))
    task_overrides = list(master.hydra.overrides.task)
    parser = OverridesParser.create(config_loader=hydra.config_loader)
    if any(o.key_or_group == "output_dir" for o in parser.parse_overrides(task_overrides)):
        raise ConfigurationError(
            "output_dir: a sweep (-m) writes job <n> to hydra.sweep.dir/<n>; give "
            "hydra.sweep.dir=<folder> instead"
        )
    here = master.hydra.launcher.get("_target_") == BASIC_LAUNCHER
    sweeper = master.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        # A search sweeper (Optuna, Ax, ...) picks its jobs as it goes; each is checked when
        # it starts.
        return Jobs([], "hydra.sweep.dir", sweep_dir, here)
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    batches = BasicSweeper.split_arguments(
        parser.parse_overrides([*params, *task_overrides]), sweeper.get("max_batch_size")
    )
    job_overrides = [list(o) for batch in batches for o in batch]
    jobs = []
    for number, these in enumerate(job_overrides):
        label = " ".join(o for o in these if not all(o in other for other in job_overrides))
        try:
            job = hydra.config_loader.load_sweep_config(master, these)
        except (HydraException, OmegaConfBaseException) as error:
            raise ConfigurationError(f"job #{number} ({label}): {one_line(error)}") from error
        with open_dict(job):
            job.hydra.job.id = number  # as Hydra's basic launcher numbers its jobs
            job.hydra.job.num = number
        subdir = str(OmegaConf.select(job, "hydra.sweep.subdir"))
        jobs.append(Job(job, subdir, f"job #{number} ({label})" if label else f"job #{number}"))
    return Jobs(jobs, "hydra.sweep.dir", sweep_dir, here)


def resolved_task(job: DictConfig, folder: str) -> DictConfig:
    """The job's config as its task function gets it: no ``hydra`` node, ``output_dir`` the
    job's folder, every interpolation resolved (``${hydra:...}`` against this job)."""
    from hydra.core.hydra_config import HydraConfig

    job = copy.deepcopy(job)
    with read_write(job.hydra.runtime), open_dict(job.hydra.runtime):
        job.hydra.runtime.output_dir = os.path.abspath(folder)
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job)
    try:
        task = copy.deepcopy(job)
        with read_write(task), open_dict(task):
            del task["hydra"]
            task.output_dir = os.path.abspath(folder)
        OmegaConf.resolve(task)
    finally:
        HydraConfig.instance().cfg = previous
    return task


def check(cfg: DictConfig, *, here: bool = True) -> None:
    """What ``unipercept.train.run`` checks before it builds anything, for one job's config;
    the device only for a job that runs ``here``, on this machine.

    Raises:
        ConfigurationError: the schedule, the initial checkpoint, the device or a file where a
            checkpoint goes.
    """
    from unipercept.train import (
        _check_checkpoint_paths,
        _check_device,
        _check_model_option,
        _check_schedule,
        _initial_weights,
    )

    _check_model_option(cfg)
    _check_schedule(cfg.stage, cfg.trainer.checkpoint_every)
    _initial_weights(cfg.stage.get("init_from"))
    if here:
        _check_device(cfg.trainer.device)
    _check_checkpoint_paths(
        Path(cfg.output_dir) / "checkpoints", cfg.stage, cfg.trainer.checkpoint_every
    )
    if here and cfg.get("finetune") is not None:  # its settings, init and data, before any job
        from unipercept.finetune import check as check_finetune

        check_finetune(cfg)


def check_data(cfg: DictConfig, env: Mapping[str, str], read: set[str]) -> None:
    """Reads the job's mixture as ``run`` will, unless a job before it read the same one (its
    resolved config in ``read``): a sweep's job whose data cannot be read stops the sweep
    before any job has trained. A mixture is read twice, here and by its first job.

    Raises:
        ConfigurationError: a dataset of the mixture cannot be read.
    """
    import torch

    from unipercept.engine.distributed import DistributedContext
    from unipercept.train import _training_data

    mixture = OmegaConf.to_yaml(cfg.stage.mixture, resolve=True)
    if mixture in read:
        return
    world_size, rank = world(env)
    context = DistributedContext(
        rank, world_size, int(env.get("LOCAL_RANK", "0")), torch.device("cpu")
    )
    _training_data(cfg, context)
    read.add(mixture)


def world(env: Mapping[str, str]) -> tuple[int, int]:
    """torchrun's ``WORLD_SIZE`` and ``RANK`` (1 and 0 without torchrun)."""
    from unipercept.train import ConfigurationError

    try:
        return int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
    except ValueError:
        raise ConfigurationError(
            f"WORLD_SIZE={env.get('WORLD_SIZE')!r} and RANK={env.get('RANK')!r} must be "
            "integers (torchrun sets them)"
        ) from None


def shared_run_dir(mine: str, env: Mapping[str, str]) -> str:
    """Rank 0's run dir, for every process of a torchrun job.

    Rank 0 publishes ``mine`` in torchrun's store (the agent's TCPStore at
    ``MASTER_ADDR:MASTER_PORT``) and the other ranks wait for it. The first value published
    stays, so that processes restarted by torchrun (``--max-restarts``) go on in the same folder.

    Args:
        mine: the run dir this process composed.
        env: the environment torchrun set (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
            ``MASTER_PORT``, ``TORCHELASTIC_USE_AGENT_STORE``).

    Returns:
        Rank 0's run dir.

    Raises:
        ConfigurationError: no store to reach (``TORCHELASTIC_USE_AGENT_STORE`` is not
            ``True``), or rank 0 did not publish within five minutes.
    """
    from torch.distributed import TCPStore

    from unipercept.train import ConfigurationError

    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise ConfigurationError("output_dir: torchrun's store is not there to share a run dir")
    try:
        store = TCPStore(
            env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=STORE_TIMEOUT
        )
        if int(env.get("RANK", "0")) == 0:
            return store.compare_set(RUN_DIR_KEY, "", mine).decode()
        return store.get(RUN_DIR_KEY).decode()
    except (KeyError, ValueError, RuntimeError) as error:  # no variable, no store, a timeout
        raise ConfigurationError(
            f"output_dir: could not learn rank 0's run dir from torchrun's store: {error}"
        ) from None


def quoted(value: str) -> str:
    """``value`` as a Hydra override value, taken literally (no interpolation, any
    character)."""
    # In a quoted override, backslashes escape only before a quote and at the end.
    escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), value)
    return "'" + escaped.replace("${", "\\${") + "'"


def insert_overrides(arguments: list[str], overrides: list[str], extra: list[str]) -> list[str]:
    """``arguments`` with ``extra`` overrides added beside its ``overrides``: argparse takes the
    overrides as one run of words and refuses a word after a later flag."""
    if not extra:
        return arguments
    if not overrides:
        return [*extra, *arguments]
    for start in range(len(arguments) - len(overrides) + 1):
        end = start + len(overrides)
        if arguments[start:end] == overrides:
            return [*arguments[:end], *extra, *arguments[end:]]
    raise AssertionError(f"the overrides {overrides} are not one run of {arguments}")


def new_folders(folders: list[str]) -> list[Path]:
    """Each of ``folders`` (absolute) and its parents that do not exist yet, deepest first."""
    found: set[Path] = set()
    for folder in folders:
        path = Path(os.path.abspath(folder))
        while not path.exists() and path != path.parent:
            found.add(path)
            path = path.parent
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def one_line(error: Exception) -> str:
    """The first line of an error, with the options Hydra lists below it."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    options: Any = getattr(error, "options", None)
    if not options and any(line.startswith("Available options") for line in lines):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = lines[start + 1 :]
    if options:
        return f"{lines[0]} (options: {', '.join(options)})"
    if len(lines) > 1 and lines[1].startswith("To append to your config use "):
        addition = lines[1].removeprefix("To append to your config use ")
        return f"{lines[0].rstrip('.')}: there is no such key (to add one: {addition})"
    return lines[0]
