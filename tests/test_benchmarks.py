"""The benchmarks run end to end (tiny settings), print a table and write JSON with the documented keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from latentcomm.data import heldout_photos
from latentcomm.models import EMBEDDED_MODEL_DIR
from tests.conftest import REPO, script_env


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m benchmarks.NAME`` from the checkout root, as docs/benchmarks.md runs them."""
    module = script.removesuffix(".py").replace("/", ".")
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=script_env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_speed_benchmark_quick(tmp_path):
    out = tmp_path / "speed.json"
    proc = run_bench("benchmarks/speed.py", "--quick", "--json", str(out))
    res = json.loads(out.read_text())
    r = res["sizes"]["64"]
    for stage in ("preprocess", "encode", "quantize_compress", "send", "decompress", "decode", "postprocess"):
        assert r["original"][stage] > 0 and r["ours_warm"][stage] > 0
    assert r["original"]["load_sender"] > 0 and r["ours_cold"]["process_wall"] > 0
    assert r["flops"]["decode_flops"] > 0 and res["matmul_peak_tflops"]["bf16"] > 0
    assert res["large_image"]["peak_rss_gib"] > 0
    assert "end_to_end" in proc.stdout


def test_server_benchmark_quick(tmp_path):
    out = tmp_path / "server.json"
    run_bench("benchmarks/server.py", "--images", "8", "--levels", "1,4", "--json", str(out))
    levels = json.loads(out.read_text())["levels"]
    assert [lv["acknowledged"] for lv in levels] == [8, 8]
    assert all(lv["p95_latency_s"] >= lv["p50_latency_s"] > 0 for lv in levels)


@pytest.mark.skipif(
    not heldout_photos() or not (EMBEDDED_MODEL_DIR / "config.json").exists(),
    reason="needs ../shared/data and the embedded model",
)
def test_quality_benchmark_quick(tmp_path):
    out, prefix = tmp_path / "q.json", tmp_path / "q"
    proc = run_bench("benchmarks/quality.py", "--quick", "--json", str(out), "--plots", str(prefix))
    res = json.loads(out.read_text())
    codecs = {r["codec"] for r in res["rows"]}
    assert {"learned", "vae-u8-zstd", "vae-f16", "jpeg", "webp"} <= codecs
    for r in res["rows"]:
        assert {"bytes", "bpp", "psnr-rgb", "ms-ssim-rgb", "ssimulacra2", "encoding_time", "decoding_time"} <= set(r)
    budgets = {r["budget_bpp"] for r in res["rows"] if r["mode"] == "budget" and r["codec"] == "learned"}
    assert budgets == {0.05, 0.1, 0.15, 0.25, 0.5}
    # The learned codec's budgeted payloads fit unless even quality 1 can't, and then it says so.
    for r in res["rows"]:
        if r["mode"] == "budget":
            assert (r["bytes"] > r["budget"]) == r["over_budget"]
    assert "BD-rate against AVIF" in proc.stdout
    assert Path(f"{prefix}_rd.png").stat().st_size > 1000 and Path(f"{prefix}_table.md").exists()

    # A pure merge (--codecs none, as after re-running one codec) measures nothing: the date and CPU
    # stay the merged run's, and --no-grid keeps its picture grid while the grid shows the same weights.
    grid = {"image": "014.png", "learned_model": res["learned_model"], "bpp": 0.25, "budget_bytes": 1, "bytes": {}}
    earlier = {**res, "date": "2000-01-01", "cpu": "an earlier CPU", "grid": grid}
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    merged = tmp_path / "merged.json"
    run_bench(
        "benchmarks/quality.py", "--codecs", "none", "--no-grid", "--merge", str(tmp_path / "earlier.json"),
        "--json", str(merged), "--plots", str(tmp_path / "m"),
    )  # fmt: skip
    out = json.loads(merged.read_text())
    assert (out["date"], out["cpu"], out["grid"]) == ("2000-01-01", "an earlier CPU", grid)
    assert out["rows"] == res["rows"]
    # A grid of other weights than the rows' is dropped, and the run says so.
    stale = {**earlier, "grid": {**grid, "learned_model": "other@0"}}
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    proc = run_bench(
        "benchmarks/quality.py", "--codecs", "none", "--no-grid", "--merge", str(tmp_path / "stale.json"),
        "--json", str(merged), "--plots", str(tmp_path / "m"),
    )  # fmt: skip
    assert "grid" not in json.loads(merged.read_text()) and "picture grid shows other learned weights" in proc.stderr


@pytest.mark.skipif(
    not heldout_photos() or not (EMBEDDED_MODEL_DIR / "config.json").exists(),
    reason="needs ../shared/data and the embedded model",
)
def test_precision_guard_benchmark_quick(tmp_path):
    out = tmp_path / "guard.json"
    proc = run_bench(
        "benchmarks/precision_guard.py", "--limit", "1", "--size", "64", "--calibration", "1", "--json", str(out)
    )
    res = json.loads(out.read_text())
    assert set(res["psnr_vs_fp32_db"]) == {"bf16", "int8-weights", "int8-static", "int8-static-mixed"}
    # bf16 is what the scripts ship on AMX CPUs: it must stay invisible next to fp32.
    assert res["min_psnr_vs_fp32_db"]["bf16"] >= res["guard_db"]
    assert "guard 40 dB" in proc.stdout


def test_codec_speed_and_pictures_quick(tmp_path):
    out = tmp_path / "s.json"
    proc = run_bench("benchmarks/codec_speed.py", "--size", "128x64", "--repeats", "1", "--json", str(out))
    res = json.loads(out.read_text())
    assert any(k.startswith("learned q7") for k in res["codecs"]) and any(k.startswith("vae") for k in res["codecs"])
    assert all(r["encode_s"] > 0 and r["decode_s"] > 0 and r["payload_bytes"] > 0 for r in res["codecs"].values())
    assert "encode s" in proc.stdout
    png = tmp_path / "cmp.png"
    run_bench("benchmarks/pictures.py", "--size", "64", "--qualities", "2", "--out", str(png))
    assert Image.open(png).size == (3 * 64, 64 + 20)


def test_decode_memory_benchmark_measures_both_decoders(tmp_path):
    out = tmp_path / "m.json"
    run_bench("benchmarks/decode_memory.py", "--sizes", "128", "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["tiled", "one-pass"], rows
    assert all(r["peak_rss_mb"] >= r["rss_after_load_mb"] > 0 and r["decode_s"] > 0 for r in rows), rows


def test_stream_benchmark_quick(tmp_path):
    out = tmp_path / "stream.json"
    run_bench("benchmarks/stream.py", "--quick", "--json", str(out))
    r = json.loads(out.read_text())
    systems = {row["system"] for row in r["live_video"]}
    anchors = {"plain x264", "plain SVT-AV1", "plain x264 at ours' bits"}
    assert anchors | {"ours h264, sealed", "ours av1, sealed"} <= systems
    equal = next(row for row in r["live_video"] if row["system"] == "plain x264 at ours' bits")
    low, high = sorted(equal["runs_bits_per_second"])  # its two runs bracket ours' bits, or come close
    assert 0.8 * low <= equal["bits_per_second"] <= 1.25 * high
    for row in r["live_video"]:
        assert row["frames_shown"] > 0 and row["viewer_psnr_db"] > 15 and "viewer_ssimulacra2" in row
    ours = next(row for row in r["live_video"] if row["system"] == "ours h264, sealed")
    assert ours["latency_p95_s"] >= ours["latency_p50_s"] > 0 and ours["receiver_cpu_s_per_frame"] > 0
    assert {t["scene"] for t in r["temporal"]} == {"static", "pan"}


def test_hardening_benchmark_measures_strangers_and_the_replay_memory(tmp_path):
    out = tmp_path / "hardening.json"
    run_bench("benchmarks/hardening.py", "--only", "strangers", "--only", "replay_memory", "--out", str(out))
    r = json.loads(out.read_text())
    assert r["strangers"]["rss_64_open_after_hello_mib"] > 0 and r["strangers"]["peak_rss_mib"] > 0
    m = r["replay_memory"]
    assert m["streams"] == 4096 and 0 < m["ms_per_frame"] < m["ms_per_whole_rewrite"]


def test_import_graph_finds_a_known_cycle_and_measures_the_package(tmp_path):
    from benchmarks import import_graph as graph

    pkg = tmp_path / "latentcomm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from latentcomm import b\n")
    (pkg / "b.py").write_text("import latentcomm.a\n")
    (pkg / "c.py").write_text("def f():\n    from latentcomm.a import thing\n")
    r = graph.measure(tmp_path)
    assert (r["modules"], r["imports"], r["imports_inside_functions"], r["layers"]) == (4, 3, 1, 2)
    assert r["cycles"] == [["latentcomm.a", "latentcomm.b"]] and len(r["imports_pointing_back_up"]) == 1
    assert r["layer_of"]["latentcomm.c"] == 1

    out = tmp_path / "graph.json"
    proc = run_bench("benchmarks/import_graph.py", "--json", str(out))
    real = json.loads(out.read_text())
    assert real["modules"] > 30 and real["imports"] > real["modules"] and "modules in" in proc.stdout
