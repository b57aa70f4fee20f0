"""The benchmark scripts run and write the records RESULTS.md is made from (tiny settings; the
timings themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from unipercept.ops import msda_backend

from .conftest import REPO_ROOT


def test_msda_benchmark_writes_one_record_per_implementation(tmp_path):
    out = tmp_path / "msda.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "msda.py"),
            "--shapes",
            "dec-300q",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    names = {r["implementation"] for r in records}
    assert {"unipercept-pytorch", "transformers-pytorch"} <= names
    if msda_backend("cpu") == "cpu":
        assert any(name.startswith("unipercept-cpu-") for name in names)
    for record in records:
        assert record["shape"] == "dec-300q" and record["queries"] == 300
        assert record["fwd_ms"] > 0 and record["fwd_bwd_ms"] > 0
    assert "dec-300q" in result.stdout


def test_detector_benchmark_agrees_and_times_both_models(tmp_path):
    out = tmp_path / "detector.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "detector.py"),
            "--height",
            "160",  # enough encoder positions for transformers' 300 two-stage proposals
            "--width",
            "224",
            "--repeats",
            "1",
            "--dtypes",
            "float32",
            "bfloat16",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    records = {r["implementation"]: r for r in json.loads(out.read_text())}
    assert {"transformers", "transformers-bf16", "unipercept-pytorch-attention"} <= set(records)
    assert records["transformers"]["speedup_vs_transformers"] == 1.0
    assert "max logit difference" in result.stdout
    for record in records.values():
        assert record["malloc"]["keep_freed_memory"] is False  # glibc's defaults unless asked
        assert record["faults_per_forward"] >= 0
    # Same weights, same precision: the same top-100 detections.
    assert records["unipercept-pytorch-attention"]["top100_matched"] == 1.0
    bf16 = records["transformers-bf16"]
    assert bf16["dtype"] == "bfloat16" and bf16["speedup_vs_transformers_same_dtype"] == 1.0
    assert 0.0 <= bf16["own_fp32_top100_matched"] <= 1.0
    if msda_backend("cpu") == "cpu":
        assert records["unipercept"]["top100_matched"] == 1.0
        assert records["unipercept-bf16"]["own_fp32_top100_max_box_px"] < 5.0
        # The same model with nn.Linear called as it is: the fused linear changes no answer.
        assert records["unipercept-plain-linear"]["top100_matched"] == 1.0
        plain_bf16 = records["unipercept-plain-linear-bf16"]
        assert plain_bf16["dtype"] == "bfloat16" and plain_bf16["own_fp32_top100_max_box_px"] < 5.0


def test_allocator_benchmark_compares_settings_in_separate_processes(tmp_path):
    out = tmp_path / "allocator.json"
    script = str(REPO_ROOT / "benchmarks" / "allocator.py")
    arguments = ["--rounds", "1", "--repeats", "1", "--height", "96", "--width", "128"]
    arguments += ["--settings", "glibc default", "keep_freed_memory()"]  # a child process each
    result = subprocess.run(
        [sys.executable, script, *arguments, "--workloads", "ours", "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["setting"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"glibc default", "keep_freed_memory()"}
    assert rows["glibc default"]["speedup_vs_default"] == 1.0
    assert all(r["ms"] > 0 and r["faults"] >= 0 and r["peak_rss_mb"] > 0 for r in rows.values())


def test_matrix_nms_benchmark_times_every_implementation(tmp_path):
    out = tmp_path / "matrix_nms.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "matrix_nms.py"),
            "--counts",
            "20",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert {r["implementation"] for r in records} == {"matrix-nms", "mask-nms", "mask-nms-textbook"}
    assert all(r["count"] == 20 and r["ms"] > 0 and r["greedy_kept"] > 0 for r in records)


def test_tracking_benchmark_times_every_tracker_following_its_objects(tmp_path):
    out = tmp_path / "tracking.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "tracking.py"),
            "--frames",
            "2",
            "--warmup",
            "2",
            "--counts",
            "4",
            "--height",
            "96",
            "--width",
            "128",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert {r["tracker"] for r in records} == {"qdtrack", "idol", "bytetrack", "flow"}
    for record in records:
        assert record["count"] == 4 and record["tracks"] == 4  # every object really tracked
        assert record["assoc_ms"] > 0 and record["model_ms"] > 0
        assert record["fraction"] == record["assoc_ms"] / record["model_ms"]


def test_predict_benchmark_times_det_and_mot_against_the_forward_pass(tmp_path):
    import pytest

    from unipercept.modeling.pretrained import bundled_models

    if "unipercept-tiny" not in bundled_models():
        pytest.skip("the bundled model is not built")
    out = tmp_path / "predict.json"
    script = str(REPO_ROOT / "benchmarks" / "predict.py")
    result = subprocess.run(
        [
            sys.executable,
            script,
            *["--rounds", "1", "--dtypes", "float32", "--frames", "6", "--json"],
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["frames"] == 6 and "malloc" in record
    runs = {r["run"]: r for r in record["results"]}
    assert set(runs) == {
        "forward",
        "library det",
        "batch 1",
        "batch 4",
        "library insseg",
        "library mot",
        "det",
        "mot",
        "read disk",
        "read http",
    }
    assert runs["forward"]["overhead"] == 0
    for name in ("det", "mot"):
        assert runs[name]["fps"] > 0 and runs[name]["ms_per_frame"] > 0
        library = runs[f"library {name}"]["ms_per_frame"]
        assert runs[name]["overhead_vs_library"] == runs[name]["ms_per_frame"] / library - 1
    for name in ("batch 1", "batch 4"):  # a batch gives the answers of one by one
        assert runs[name]["reference"] == "library det"
        assert runs[name]["agreement"]["matched"] == 1.0
    assert runs["read http"]["baseline"] == "read disk" and runs["read http"]["fps"] > 0


def test_busy_machine_benchmark_times_each_wait_policy_and_thread_count(tmp_path):
    import pytest

    from unipercept.modeling.pretrained import bundled_models

    if "unipercept-tiny" not in bundled_models():
        pytest.skip("the bundled model is not built")
    out = tmp_path / "busy.json"
    script = str(REPO_ROOT / "benchmarks" / "busy_machine.py")
    arguments = ["--rounds", "1", "--burners", "0", "--frames", "3", "--json", str(out)]
    arguments += ["--settings", "libgomp default", "one thread"]  # each is a child process
    result = subprocess.run(
        [sys.executable, script, *arguments], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    by_setting = {r["setting"]: r for r in rows}
    assert set(by_setting) == {"libgomp default", "one thread"}
    assert by_setting["one thread"]["threads"] == 1
    assert all(r["ms_per_step"] > 0 for r in rows)


def test_uninext_benchmark_times_each_variant_and_compares_answers(tmp_path):
    out = tmp_path / "uninext.json"
    script = str(REPO_ROOT / "benchmarks" / "uninext.py")
    arguments = ["--tiny", "--repeats", "1", "--workloads", "video", "template", "--json", str(out)]
    result = subprocess.run(
        [sys.executable, script, *arguments], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    rows = {(r["workload"], r["variant"]): r for r in record["results"]}
    assert set(rows) == {
        ("video", "fp32"),
        ("video", "fp32-pytorch-msda"),
        ("video", "fp32-plain-linear"),
        ("video", "bf16"),
        ("template", "fp32"),
        ("template", "bf16"),
    }
    assert all(r["ms"] > 0 for r in rows.values())
    assert rows["video", "fp32"]["speedup_vs_fp32"] == 1.0
    assert {"backbone", "fusion", "encoder", "decoder", "masks", "reid"} <= set(
        rows["video", "fp32"]["stage_ms"]
    )
    for variant in ("fp32", "fp32-pytorch-msda", "fp32-plain-linear", "bf16"):
        memory = rows["video", variant]["memory"]
        assert memory["peak_mb"] >= memory["before_mb"] > 0
    assert rows["template", "fp32"]["memory"] is None
    comparisons = {c["variant"]: c for c in record["comparisons"]}
    assert set(comparisons) == {"fp32-pytorch-msda", "fp32-plain-linear", "bf16"}
    # The PyTorch fallback computes the same function as the compiled op, and nn.Linear the
    # same as oneDNN's fused linear.
    for name in ("fp32-pytorch-msda", "fp32-plain-linear"):
        reference = comparisons[name]
        assert reference["slots_same"] == 1.0 and reference["top10_same_query_class"] == 10
        assert reference["max_logit_diff"] < 1e-3 and reference["max_box_diff_px"] < 1e-3
    assert "top-10 same (query, class)" in result.stdout


def test_uninext_benchmark_names_a_missing_key_manifest(tmp_path):
    missing = tmp_path / "r50.txt"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "uninext.py"), "--keys", str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"uninext.py: key manifest not found: {missing} (pass --keys PATH)"
    ]
