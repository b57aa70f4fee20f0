"""``python -m unipercept.train`` as a Hydra app: --help lists the groups, --cfg job prints the
config and writes nothing, a two-job sweep trains each job in its folder with its own value,
output_dir holds everything of a run, config errors (also a sweep's, found before its first
job) are one line with exit code 2, and every torchrun process takes rank 0's run dir."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from unipercept.data.synthetic import generate

# A two-step run of the tiny model on the generated world's referring data (the mixture that
# reads fastest), checkpointing at step 2.
TINY = [
    "stage=2_image_joint",
    "stage/mixture=synthetic_referring",
    "model=unipercept_tiny",
    "trainer=cpu_tiny",
    "stage.init_from=null",
    "stage.max_steps=2",
    "stage.warmup_steps=1",
    "stage.milestones=[]",
]
# Only stops a hung process (a rendezvous that never completes), far beyond a run's time.
HANG_TIMEOUT_S = 3600


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate(root / "synthetic", seed=0, size="small")
    return root


def cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, torchrun: int = 0
) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    command = [sys.executable, *(launcher if torchrun else []), "-m", "unipercept.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S
    )


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_help_lists_the_groups_and_says_what_the_command_does(tmp_path):
    result = cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    assert text.startswith("python -m unipercept.train stage=<stage>")
    assert "three stages" in text and "outputs/<date>/<time>" in text
    groups = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    assert groups["stage"].split(", ")[:3] == ["1_pretrain", "2_image_joint", "3_video_joint"]
    assert "unipercept_tiny" in groups["model"].split(", ")
    assert groups["trainer"] == "cpu_tiny, default, single_gpu"
    assert groups["optim"] == "adamw" and "unipercept" in groups["criterion"]
    assert "--multirun,-m" in text and "hydra/launcher=submitit_slurm" in text
    assert tree(tmp_path) == []


def test_cfg_job_prints_the_config_and_trains_nothing(tmp_path):
    result = cli(["--cfg", "job", *TINY, "stage.lr=3e-4"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = yaml.safe_load(result.stdout)
    assert cfg["stage"]["name"] == "2_image_joint" and cfg["stage"]["lr"] == 3e-4
    assert cfg["trainer"]["device"] == "cpu" and cfg["stage"]["max_steps"] == 2
    assert "hydra" not in cfg and cfg["output_dir"].startswith("outputs/${now:")
    assert tree(tmp_path) == []  # no run folder, no log


def test_cfg_job_of_a_fine_tune_shows_the_model_comes_from_init(tmp_path, monkeypatch, capsys):
    """A fine-tune builds init's own architecture: its printed config says so, instead of
    showing the model group's default (which the run does not use)."""
    from unipercept.train import main

    monkeypatch.chdir(tmp_path)
    finetune = ["finetune=coco", "data.json=ann.json", "data.images=images", "init=my-model"]
    assert main(["--cfg", "job", "--resolve", *finetune]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"] == {"from_init": True} and cfg["init"] == "my-model"
    assert cfg["stage"]["name"] == "finetune"
    assert tree(tmp_path) == []


def test_info_shows_the_defaults_without_running(tmp_path, monkeypatch, capsys):
    from unipercept.train import main

    monkeypatch.chdir(tmp_path)
    assert main(["--info", "defaults", "stage=3_video_joint"]) == 0
    assert "stage/3_video_joint" in capsys.readouterr().out
    assert tree(tmp_path) == []


def test_a_sweep_trains_each_job_in_its_own_folder(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = cli(
        ["-m", *TINY, "stage.lr=1e-4,2e-4", f"hydra.sweep.dir={sweep}"],
        cwd=cwd,
        env={"UNIPERCEPT_DATA": str(data_root)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep / "multirun.yaml").is_file()
    for job, lr in (("0", 1e-4), ("1", 2e-4)):
        folder = sweep / job
        checkpoint = folder / "checkpoints" / "step_00000002"
        assert (checkpoint / "model.safetensors").is_file()
        trained = yaml.safe_load((checkpoint / "config.yaml").read_text())
        assert trained["stage"]["lr"] == lr and trained["output_dir"] == str(folder)
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        assert f"stage.lr={lr}" in overrides
        assert "step 2/2" in (folder / "train.log").read_text()
    assert tree(cwd) == []  # no outputs/ or multirun/ beside


def test_a_sweep_runs_through_hydras_submitit_launcher(data_root, tmp_path):
    """The launcher plugin a SLURM cluster uses (hydra-submitit-launcher), here its local
    executor: each job is pickled by submitit, run in its own process, and trains in its
    folder as with the basic launcher."""
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher"
    )
    sweep = tmp_path / "sweep"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = cli(
        [
            "-m",
            *TINY,
            "stage.lr=1e-4,2e-4",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=60",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=cwd,
        env={"UNIPERCEPT_DATA": str(data_root)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in result.stdout + result.stderr
    for job, lr in (("0", 1e-4), ("1", 2e-4)):
        checkpoint = sweep / job / "checkpoints" / "step_00000002"
        trained = yaml.safe_load((checkpoint / "config.yaml").read_text())
        assert trained["stage"]["lr"] == lr
    assert len(list((sweep / ".submitit").glob("*/*_0_result.pkl"))) == 2  # two processes
    assert tree(cwd) == []


def test_the_next_stage_finds_the_newest_dated_run_of_the_previous_one(
    data_root, tmp_path, monkeypatch
):
    """Without output_dir, a run goes to outputs/<date>/<time>; a later stage's default
    init_from (outputs/<stage>/checkpoints) then finds it by the stage name in .hydra/."""
    from unipercept.train import ConfigurationError, _initial_weights

    result = cli(TINY, cwd=tmp_path, env={"UNIPERCEPT_DATA": str(data_root)})
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs").glob("*/*/checkpoints/step_00000002")
    # A later run of another stage (its name sorts after) is not taken for this one.
    other = tmp_path / "outputs" / "2999-01-01" / "00-00-00"
    (other / ".hydra").mkdir(parents=True)
    (other / ".hydra" / "config.yaml").write_text("stage:\n  name: 1_pretrain\n")
    monkeypatch.chdir(tmp_path)
    assert _initial_weights("outputs/2_image_joint/checkpoints").resolve() == run.resolve()
    assert _initial_weights("outputs/2_image_joint").resolve() == run.resolve()
    with pytest.raises(ConfigurationError, match="nor a run of that stage under outputs/<date>"):
        _initial_weights("outputs/1_pretrain/checkpoints")  # its run has no checkpoint


def test_output_dir_holds_everything_of_a_run(data_root, tmp_path, monkeypatch):
    """Called from Python (``main(argv)``), with a relative output_dir: checkpoints, TensorBoard,
    Hydra's .hydra/ and the log all land in it, nothing beside it, and the caller's logging is
    as it was."""
    from unipercept.train import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNIPERCEPT_DATA", str(data_root))
    root = logging.getLogger()
    handlers = list(root.handlers)
    assert main([*TINY, "output_dir=runs/a"]) == 0
    assert root.handlers == handlers
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    run = tmp_path / "runs" / "a"
    assert sorted(p.name for p in run.iterdir()) == [
        ".hydra",
        "checkpoints",
        "tensorboard",
        "train.log",
    ]
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    trained = yaml.safe_load((run / "checkpoints" / "step_00000002" / "config.yaml").read_text())
    assert trained["output_dir"] == str(run)
    assert "step 2/2" in (run / "train.log").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stage=9_nonsense"], "Could not find 'stage/9_nonsense' (options: 1_pretrain"),
        (["-m", *TINY, "trainer.no_such_key=1,2"], "'trainer.no_such_key': there is no such key"),
        # Job 0 is fine; job 1 stops the sweep before job 0 trains.
        (
            ["-m", *TINY, "stage.max_steps=2,0"],
            "job #1 (stage.max_steps=0): stage.max_steps must be >= 1",
        ),
        (["-m", *TINY, "stage.lr=1e-4,2e-4", "output_dir=x"], "give hydra.sweep.dir="),
        (["-m", *TINY, "stage.lr=1e-4,2e-4", "UNIPERCEPT_DATA=/no/such"], "file: not found"),
        (
            [*(a for a in TINY if not a.startswith("model=")), "model=from_init"],
            "model=from_init: only a fine-tune (finetune=coco|refcoco|ytvis|mot) takes its",
        ),
    ],
    ids=["stage", "sweep_key", "sweep_job", "sweep_output_dir", "sweep_data", "from_init"],
)
def test_config_errors_are_one_line_and_code_2_before_any_work(data_root, tmp_path, args, message):
    env = {"UNIPERCEPT_DATA": str(data_root)}
    if "UNIPERCEPT_DATA=/no/such" in args:
        args = [a for a in args if not a.startswith("UNIPERCEPT_DATA=")]
        env["UNIPERCEPT_DATA"] = "/no/such"
        message = "job #0 (stage.lr=0.0001): stage.mixture: /no/such/synthetic/"
    result = cli(args, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert "HYDRA_FULL_ERROR" not in result.stderr and result.stdout == ""
    assert tree(tmp_path) == []  # no run folder, no sweep folder, no log


def test_processes_without_torchrun_store_must_be_given_a_folder(tmp_path, monkeypatch, caplog):
    """Two processes whose environment says WORLD_SIZE=2 without torchrun's agent store cannot
    agree on a dated folder: one line, nothing written."""
    from unipercept.train import main

    monkeypatch.chdir(tmp_path)
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    with caplog.at_level("ERROR", logger="unipercept.train"):
        assert main(TINY) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "cannot agree on a dated run dir" in errors[0], errors
    assert tree(tmp_path) == []


def test_rank0_publishes_its_run_dir_and_the_first_one_stays():
    """Through a TCPStore as torchrun's agent hosts it: rank 1 waits for rank 0's folder, and a
    restarted rank 0 with a later clock gets the first folder back."""
    from torch.distributed import TCPStore

    from unipercept.train_jobs import shared_run_dir

    agent = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(agent.port),
        "WORLD_SIZE": "2",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }
    answers = {}
    waiting = threading.Thread(
        target=lambda: answers.update(
            rank1=shared_run_dir("outputs/d/10-00-01", {**env, "RANK": "1"})
        )
    )
    waiting.start()
    answers["rank0"] = shared_run_dir("outputs/d/10-00-00", {**env, "RANK": "0"})
    waiting.join()  # bounded by the store's own timeout, not the clock here
    assert answers == {"rank0": "outputs/d/10-00-00", "rank1": "outputs/d/10-00-00"}
    assert shared_run_dir("outputs/d/10-05-00", {**env, "RANK": "0"}) == "outputs/d/10-00-00"


def test_torchrun_processes_share_rank0s_run_dir(data_root, tmp_path):
    """Each rank's own choice of folder differs (rank<RANK>); all of the run lands in rank 0's,
    with .hydra/ and the log written once."""
    result = cli(
        [*TINY, f"hydra.run.dir={tmp_path}/runs/rank${{oc.env:RANK}}"],
        cwd=tmp_path,
        env={"UNIPERCEPT_DATA": str(data_root)},
        torchrun=2,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["rank0"]
    run = tmp_path / "runs" / "rank0"
    assert (run / "checkpoints" / "step_00000002" / "model.safetensors").is_file()
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()


@pytest.mark.parametrize(
    "value",
    ["/tmp/a b,c=d", "/tmp/it's", "C:\\runs\\", "/x\\'y", "/tmp/${now:%H}/[1]{2}"],
)
def test_a_pinned_folder_reaches_hydra_unchanged(value):
    """The folder the pre-flight pins goes through Hydra's override grammar and OmegaConf
    literally: quotes, commas, backslashes and ${...} included."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from unipercept.train_jobs import quoted

    override = OverridesParser.create().parse_override(f"hydra.run.dir={quoted(value)}")
    assert OmegaConf.create({"dir": override.value()}).dir == value


@pytest.mark.parametrize(
    "arguments",
    [["-m", "a=1", "b=2"], ["a=1", "b=2", "-m"], ["--cfg", "job", "a=1"], ["--info"], []],
)
def test_added_overrides_keep_the_command_line_parseable(arguments):
    """argparse takes the overrides as one run of words: the pre-flight's own go beside them."""
    from hydra._internal.utils import get_args_parser

    from unipercept.train_jobs import insert_overrides

    given = get_args_parser().parse_args(arguments)
    command = insert_overrides(arguments, given.overrides, ["x=1", "y=2"])
    parsed = get_args_parser().parse_args(command)
    assert parsed.overrides == [*given.overrides, "x=1", "y=2"]
    assert (parsed.multirun, parsed.cfg, parsed.info) == (given.multirun, given.cfg, given.info)
