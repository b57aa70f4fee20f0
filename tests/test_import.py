"""`import unipercept` stays cheap: no torch, Hydra, transformers or compiled op at import."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "torch",
    "hydra",
    "transformers",
    "omegaconf",
    "cv2",
    "av",
    "MultiScaleDeformableAttention",
)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.stderr == "", f"import printed to stderr: {out.stderr}"
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_loads_nothing_heavy():
    loaded = _modules_after("import unipercept")
    assert not {name.split(".")[0] for name in loaded} & set(HEAVY)


def test_structures_do_not_pull_hydra_or_transformers():
    loaded = {
        name.split(".")[0]
        for name in _modules_after("import unipercept.structures, unipercept.ops")
    }
    assert "torch" in loaded
    assert not loaded & {"hydra", "transformers", "omegaconf"}


def test_subpackages_load_on_attribute_access():
    import unipercept

    assert unipercept.structures.Instances.__name__ == "Instances"
    assert callable(unipercept.ops.nms)
    assert "structures" in dir(unipercept)


def test_unknown_attribute_raises_attribute_error():
    import unipercept

    try:
        unipercept.does_not_exist  # noqa: B018
    except AttributeError as error:
        assert "does_not_exist" in str(error)
    else:
        raise AssertionError("expected AttributeError")
