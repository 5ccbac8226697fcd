"""`edgevlm bench` options, the roofline arithmetic and the plot (issue 6).

The CLI runs as a subprocess on the embedded default bundle, with tiny settings so it stays fast.
"""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from edgevlm.benchmarks import latency, roofline


def run(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "edgevlm.cli", "bench", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


TINY = ("--repeat", 2, "--warmup", 0, "--new-tokens", 4, "--image-size", 64, "--threads", 1)


def assert_one_line_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], proc.stderr


def test_default_bundle_reports_every_stage_and_the_roofline():
    proc = run(*TINY, "--prompt-tokens", 20, "--roofline-quick")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])["results"][0]
    for stage in latency.STAGES:
        s = result["stages_ms"][stage]
        assert 0 < s["min"] <= s["median"] <= s["max"], stage
    for figure in (*latency.RATES, "load_ms"):
        assert result[figure]["median"] > 0, figure
    assert result["bundle_mb"] > 0 and result["peak_rss_mb"] > 0
    # the default template has 4 text tokens; 16 filler tokens make 20, besides 36 image tokens
    assert (result["text_tokens"], result["image_tokens"], result["prompt_tokens"]) == (20, 36, 56)
    assert result["image"] == "synthetic 64x64" and result["decode_context"] == {"first": 56, "last": 58}
    peaks, stages = result["roofline"]["peaks"], result["roofline"]["stages"]
    for peak in ("fp32_gflops", "int8_gops", "read_gb_s"):
        assert peaks[peak]["median"] > 0, peak
    assert set(stages) == {"vision_encode", "prefill", "decode_per_token"}
    assert all(s["fraction"] > 0 and s["ideal_ms"] > 0 for s in stages.values())
    assert "roofline threads=1" in proc.stdout


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench.png"
    proc = run(*TINY, "--threads", "1,2", "--plot", out)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.loads(proc.stdout.strip().splitlines()[-1])  # the JSON line stays last


def test_plot_without_matplotlib_is_one_line(tmp_path):
    code = ("import sys\nsys.modules['matplotlib'] = None  # import matplotlib now raises ImportError\n"
            "from edgevlm.cli import main\n"
            f"main(['bench', '--plot', {str(tmp_path / 'b.png')!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, "pip install 'edgevlm[bench]'")


@pytest.mark.parametrize("args, pattern", [
    (("--image-size", 0), "--image-size 0"),
    (("--prompt-tokens", -1), "--prompt-tokens -1"),
    (("--new-tokens", 1), "--new-tokens 1"),
    (("--image-size", 8, "--image", "x.png"), "not both"),
    (("--prompt-tokens", 500), "exceeds the model's context"),
])
def test_bad_options_are_one_line_errors(args, pattern):
    assert_one_line_error(run("--repeat", 1, "--warmup", 0, *args), pattern)


def test_pad_prompt_adds_filler_before_the_image():
    import edgevlm

    prompter = edgevlm.load(None, threads=1).prompter
    ids = prompter.encode(None)
    padded = latency.pad_prompt(ids, prompter, 30)
    assert len(padded) - padded.count(prompter.image_token_id) == 30 and padded[-len(ids):] == ids
    assert latency.pad_prompt(ids, prompter, 1) == ids  # never shorter than the template
    assert latency.pad_prompt(ids, prompter, None) == ids


def test_synthetic_image_is_deterministic():
    from edgevlm.image import load_image

    assert latency.synthetic_image(32) == latency.synthetic_image(32)
    assert load_image(latency.synthetic_image(32)).size == (32, 32)


# hand-computed FLOPs and bytes for tiny shapes (namespaces: the arithmetic reads attributes only)
VISION = SimpleNamespace(image_size=16, patch_size=8, hidden_size=4, num_layers=1, intermediate_size=8)
TEXT = SimpleNamespace(hidden_size=4, num_heads=2, head_dim=2, num_kv_heads=1, intermediate_size=8, num_layers=1,
                       vocab_size=10)
CFG = SimpleNamespace(vision=VISION, text=TEXT)


def test_flop_and_byte_counts():
    # 4 tokens: patch 2*4*(3*64)*4 = 6144; layer 2*4*(4*16 + 2*4*8) + 4*4*4*4 = 1280; projector 2*4*4*4(text) = 128
    assert roofline.vision_flops(CFG) == 6144 + 1280 + 128
    # 3 tokens: 2*3*(2*4*4 + 2*4*2 + 3*4*8) = 864, attention 4*3*3*4 = 144, lm_head 2*4*10 = 80
    assert roofline.prefill_flops(TEXT, 3) == 864 + 144 + 80
    # K and V, 1 layer, 1 kv head of 2 floats (4 bytes) at 10 positions: 2*1*1*2*4*10 = 160
    assert roofline.decode_bytes(1000, TEXT, 10) == 1160


def test_fraction_of_limit():
    assert roofline.fraction(2e9, 1e12, 4.0) == {"ideal_ms": 2.0, "fraction": 0.5}
    assert roofline.fraction(1e6, None, 4.0) == {"ideal_ms": None, "fraction": None}


def test_stage_fractions_pick_the_limit_of_each_stage():
    peaks = {"fp32_gflops": {"median": 1.0}, "int8_gops": {"median": 2.0}, "read_gb_s": {"median": 1.0}}
    result = {"tiles": 2, "prompt_tokens": 3, "decode_context": {"first": 3, "last": 5},
              "stages_ms": {"vision_encode": {"median": 0.015104}, "prefill": {"median": 0.004352},
                            "decode_per_token": {"median": 0.001064}}}
    out = roofline.stage_fractions(result, peaks, CFG, {"vision_encoder": "int8", "decoder": "fp32"}, 1000)
    # vision: 2 tiles * 7552 FLOPs at 2e9/s (int8) = 0.007552 ms of 0.015104 measured
    assert out["vision_encode"]["limit"] == "int8 GEMM" and out["vision_encode"]["fraction"] == 0.5
    # prefill: 1088 FLOPs at 1e9/s (fp32) = 0.001088 ms of 0.004352
    assert out["prefill"]["limit"] == "fp32 GEMM" and out["prefill"]["fraction"] == 0.25
    # decode: 1000 weight bytes + KV at mean context 4 (64 bytes) at 1e9 B/s = 0.001064 ms
    assert out["decode_per_token"]["work_bytes"] == 1064 and out["decode_per_token"]["fraction"] == 1.0
    no_int8 = roofline.stage_fractions(result, {**peaks, "int8_gops": None}, CFG,
                                       {"vision_encoder": "int8", "decoder": "int4"}, 1000)
    assert no_int8["vision_encode"]["fraction"] is None and no_int8["prefill"]["fraction"] is None


def test_measure_without_onnx_uses_numpy_and_skips_int8(monkeypatch):
    monkeypatch.setattr(roofline, "_gemm_session", lambda *a: None)
    peaks = roofline.measure(1, quick=True)
    assert peaks["gemm_method"] == "numpy" and peaks["fp32_gflops"]["median"] > 0
    assert peaks["int8_gops"] is None and "onnx" in peaks["int8_skipped"]
    assert peaks["read_gb_s"]["median"] > 0
