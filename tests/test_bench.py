"""The benchmark harness: statistics, frame arithmetic, result records and table, and the length forcing
that makes every engine produce exactly the requested number of frames."""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

from qtts import bench, long_text

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def test_spread_is_median_and_range_over_runs():
    spread = bench.Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (spread.median, spread.low, spread.high, spread.n) == (2.5, 1.0, 10.0, 4)
    assert spread.text(1) == "2.5 [1.0-10.0]"
    assert bench.Spread.of([4.0]).text(1) == "4.0"
    with pytest.raises(ValueError):
        bench.Spread.of([])


def test_frames_are_counted_from_whole_samples_only():
    assert bench.frames_in(250 * 1920) == 250
    assert bench.frames_in(0) == 0
    with pytest.raises(ValueError, match="not a whole number"):
        bench.frames_in(250 * 1920 + 1)


def test_real_time_factor_is_audio_seconds_over_wall_seconds():
    # 250 frames = 20 s of audio; produced in 5 s is 4x real time.
    assert bench.xrt(250 * 1920, 5.0) == pytest.approx(4.0)
    assert bench.FRAME_SECONDS == pytest.approx(0.08)


def test_official_and_qtts_need_one_talker_token_more_than_frames():
    assert bench.talker_tokens(250) == 251


def test_step_time_is_median_interval_without_the_prefill():
    # prefill 1 s, then steps of 10, 12, 11 ms: the prefill interval must not count.
    stamps = [0.0, 1.0, 1.010, 1.022, 1.033]
    assert bench.step_ms(stamps) == pytest.approx(11.0)
    with pytest.raises(ValueError):
        bench.step_ms([0.0, 1.0])


def test_marginal_frame_cost_cancels_fixed_costs():
    fixed_s, per_frame_s = 0.3, 0.004
    long_wall, short_wall = fixed_s + 250 * per_frame_s, fixed_s + 50 * per_frame_s
    assert bench.marginal_ms_per_frame(long_wall, 250, short_wall, 50) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        bench.marginal_ms_per_frame(1.0, 50, 1.0, 50)


def test_step_clock_stamps_each_call_and_keeps_the_signature():
    class Loop:
        def forward(self, x, *, scale=2):
            return x * scale

    loop, clock = Loop(), bench.StepClock()
    clock.wrap(loop, "forward")
    assert [loop.forward(i) for i in range(3)] == [0, 2, 4]
    stamps = clock.take()
    assert len(stamps) == 3 and stamps == sorted(stamps)
    assert clock.take() == []
    # HF generate validates its kwargs against forward's signature; a bare *args wrapper would break it.
    assert list(inspect.signature(loop.forward).parameters) == ["x", "scale"]


def test_measure_calls_rejects_a_length_that_was_not_forced():
    walls, speeds = bench.measure_calls(lambda seed: 10 * 1920, 10, [0, 1])
    assert len(walls) == len(speeds) == 2 and all(s > 0 for s in speeds)
    with pytest.raises(RuntimeError, match="returned 9 frames"):
        bench.measure_calls(lambda seed: 9 * 1920, 10, [0])


def _result(system: str, ttfa: bench.Spread | None) -> bench.Result:
    return bench.Result(
        system=system, model="0.6b-CV", text="sentence", frames=250, runs=3,
        xrt=bench.Spread.of([4.1, 4.2, 4.0]), e2e_ms_per_frame=bench.Spread.of([19.0, 19.2, 19.1]),
        step_ms_per_frame=bench.Spread.of([18.7, 18.8, 18.6]), step_method="stamps",
        decode_ms_per_frame=None, ttfa_ms=ttfa, ttfa_note="chunk 12" if ttfa else "no streaming API",
        streaming_xrt=None, peak_alloc_gib=2.93, peak_reserved_gib=3.4, versions={"torch": "2.11.0"},
    )


def test_result_survives_its_json_line():
    result = _result("faster", bench.Spread.of([281.0, 290.0, 283.0]))
    line = result.to_json()
    assert "\n" not in line
    back = bench.Result.from_dict(json.loads(line))
    assert back == result


def test_table_has_one_row_per_result_and_marks_missing_figures():
    table = bench.markdown_table([_result("faster", bench.Spread.of([281.0, 290.0])), _result("official", None)])
    lines = table.splitlines()
    assert len(lines) == 4
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "**4.100 [4.000-4.200]**" in lines[2]
    assert "286 [281-290] (chunk 12)" in lines[2]
    assert "n/a (no streaming API)" in lines[3]
    assert lines[3].count("| n/a |") == 2  # neither streaming nor decode measured


def test_texts_have_the_intended_lengths():
    assert 25 <= len(bench.TEXTS["sentence"].split()) <= 35
    assert 250 <= len(bench.TEXTS["passage"].split()) <= 350


def test_official_engine_gives_exactly_the_forced_frames():
    """The wrapper in bench/peer_official.py, run on a tiny official model biased to stop at once."""
    from oracle import official

    official()
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration

    from qtts.testing.configs import tiny_tts_config

    sys.path.insert(0, str(BENCH_DIR))
    try:
        from peer_official import force_length
    finally:
        sys.path.remove(str(BENCH_DIR))

    torch.manual_seed(0)
    config = tiny_tts_config("custom_voice")
    model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**config)).eval()
    eos = config["talker_config"]["codec_eos_token_id"]

    def prefer_eos(module, inputs, logits):  # without forcing, greedy decoding stops after 2 tokens
        logits[..., eos] += 1e4
        return logits

    model.talker.codec_head.register_forward_hook(prefer_eos)
    # "<|im_start|>assistant\n" + 5 text tokens + "<|im_end|>\n<|im_start|>assistant\n"
    text = torch.tensor([[151644, 77091, 198, 1000, 1001, 1002, 1003, 1004, 151645, 198, 151644, 77091, 198]])

    def frames(max_new_tokens: int) -> int:
        codes, _ = model.generate(input_ids=[text], languages=["english"], speakers=["ryan"],
                                  non_streaming_mode=True, max_new_tokens=max_new_tokens, do_sample=False,
                                  subtalker_dosample=False)
        return codes[0].shape[0]

    assert frames(bench.talker_tokens(6)) < 6  # the EOS bias bites
    force_length(model.talker)
    assert frames(bench.talker_tokens(6)) == 6


def test_qtts_bench_gives_the_forced_frame_count_on_cpu(tmp_path):
    """`qtts bench` end to end on a tiny checkpoint: measure_calls raises unless every call returned exactly
    the forced frames, so this also pins the max_new_tokens meaning that `talker_tokens` assumes."""
    from qtts.testing import write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path, "custom_voice")
    # the passage is longer than one segment of long text: the bench still speaks it as one request
    assert len(bench.TEXTS["passage"]) > long_text.SEGMENT_CHARS
    results = bench.bench_qtts(str(tmp_path), ["sentence", "passage"], frames=10, runs=1, model="tiny",
                               device="cpu")
    assert [(r.frames, r.runs, r.text) for r in results] == [(10, 1, "sentence"), (10, 1, "passage")]
    for result in results:
        assert result.xrt.median > 0 and result.decode_ms_per_frame.median > 0
        assert math.isfinite(result.step_ms_per_frame.median)
    assert long_text.SEGMENT_CHARS == long_text.DEFAULT_MAX_CHARS  # put back for every other caller


@pytest.mark.gpu
def test_qtts_bench_measures_a_tiny_checkpoint_on_the_gpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from qtts.testing import write_checkpoint
    from qtts.testing.configs import tiny_speech_tokenizer_config, tiny_tts_config

    write_checkpoint(tmp_path, tiny_tts_config("custom_voice"), tiny_speech_tokenizer_config(), seed=0,
                     device="cuda")
    start = time.perf_counter()
    (result,) = bench.bench_qtts(str(tmp_path), ["sentence"], frames=20, runs=3, model="tiny")
    assert time.perf_counter() - start < 300
    assert result.frames == 20 and result.xrt.n == 3
    assert math.isfinite(result.xrt.median) and result.xrt.median > 0
    assert result.peak_alloc_gib > 0


def test_orchestrator_keeps_results_printed_before_a_runner_overran(tmp_path, monkeypatch):
    """A slow engine stopped by the call's budget still contributes the texts it finished."""
    import argparse

    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import compare

    line = _result("slow engine", None).to_json()
    runner = tmp_path / "runner.py"
    runner.write_text(f"import sys, time\nprint({line!r}, flush=True)\ntime.sleep(60)\n")
    monkeypatch.setitem(compare.SYSTEMS, "slow", {"paths": [], "runner": [str(runner)]})
    args = argparse.Namespace(frames=250, runs=3, texts="sentence,passage", size="0.6b")
    start = time.perf_counter()
    results, account = compare.run_system("slow", tmp_path, args, timeout_s=5, out=tmp_path)
    assert time.perf_counter() - start < 30
    assert [r.system for r in results] == ["slow engine"]
    assert "stopped after 5 s" in account and (tmp_path / "slow.log").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="Triton ships its CUDA tools (ptxas, cuobjdump) for Linux")
def test_sass_probe_compiles_every_per_layer_kernel_of_a_frame_for_sm_90_without_a_gpu():
    """bench/sass_probe.py in its own process (it turns Triton's interpreter off): one row per kernel that a
    one-row 0.6B frame launches per layer, each compiled and read."""
    import subprocess

    pytest.importorskip("triton")
    done = subprocess.run([sys.executable, str(BENCH_DIR / "sass_probe.py"), "--size", "0.6b"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| talker")
            or line.startswith("| predictor")]
    names = [row[0].strip() for row in rows]
    # the talker's cache is split across programs (so its merge runs); the predictor's 16 rows are not
    assert names == [f"{stack}: {kernel}" for stack in ("talker", "predictor") for kernel in (
        "q/k/v product", "q/k norm, RoPE, cache", "attention", "attention split merge", "o product + residual",
        "gate/up product + SwiGLU", "down product + residual") if not (stack == "predictor" and "merge" in kernel)]
    registers, instructions = [int(row[1]) for row in rows], [int(row[4]) for row in rows]
    assert all(0 < r <= 255 for r in registers) and all(n > 100 for n in instructions)


def test_frame_tune_tries_the_tables_block_first_then_each_other_block_once(monkeypatch):
    """bench/frame_tune.py's candidates per product shape, and the shapes it records from real launches."""
    from qtts import kernels

    if not kernels.available():
        pytest.skip("Triton is not installed")
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import frame_tune
    from qtts.kernels import linear

    device = "cpu" if kernels.interpreted() else "cuda"
    recorded = set()
    with frame_tune.recording_shapes(recorded):  # a real one-row launch, gated
        linear.fused_linear_triton(torch.randn(1, 16, device=device), torch.randn(48, 16, device=device),
                                   norm_weight=torch.ones(16, device=device), gated=True)
    assert recorded == {(24, 16, True)}
    monkeypatch.setattr(linear, "interpreted", lambda: False)  # the GPU's table, not the interpreter's blocks
    for shape in ((4096, 1024, False), (3072, 1024, True), (1024, 3072, False)):
        found = frame_tune.candidates(*shape)
        assert found[0] == linear.DECODE_CONFIGS[shape]
        assert len(found) == len(set(found)) > 10
        assert all(block_k <= max(1024, 2 ** (shape[1] - 1).bit_length()) for _, block_k, _ in found)
        assert (8, 512, 4) in found
    with frame_tune.blocks({(4096, 1024, False): (4, 512, 2)}):
        assert linear.linear_config(1, 4096, 1024, False) == (4, 512, 2)
    assert linear.linear_config(1, 4096, 1024, False) == linear.DECODE_CONFIGS[(4096, 1024, False)]
    assert frame_tune.parse_shape("3072x1024g") == (3072, 1024, True)


@pytest.mark.parametrize("left_out", ["predictor:o", "talker:down"])
def test_hop_probe_leaves_out_one_kind_of_product_of_one_stage(monkeypatch, one_thread, left_out):
    """bench/hop_probe.py's `STAGE:PRODUCT`: the fused frame (interpreted on CPU) launches every product of
    every layer but that kind of that stage's, and the heads' products stay."""
    from qtts import kernels
    from qtts.config import TTSConfig
    from qtts.engine import frame as frame_module
    from qtts.engine.scheduler import Scheduler
    from qtts.models.talker import Talker
    from qtts.prompt import PromptPlan
    from qtts.sampling import SamplingParams
    from qtts.testing.configs import tiny_tts_config

    if not kernels.available():
        pytest.skip("Triton is not installed")
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import hop_probe

    device = "cpu" if kernels.interpreted() else "cuda"
    torch.manual_seed(0)
    talker = Talker(TTSConfig.from_dict(tiny_tts_config("base")).talker_config, device=device,
                    dtype=torch.float32).eval()
    launched = []
    real_product = frame_module.fused_linear_triton

    def recording(x, weight, **kwargs):
        launched.append(weight.data_ptr())
        return real_product(x, weight, **kwargs)

    monkeypatch.setattr(frame_module, "fused_linear_triton", recording)
    hidden = talker.codec_head.weight.shape[1]
    plan = PromptPlan(torch.randn(5, hidden, device=device), torch.randn(3, hidden, device=device),
                      torch.randn(hidden, device=device))
    params = SamplingParams(do_sample=False, subtalker_dosample=False, max_new_tokens=3)
    # the probe builds and captures its frames inside the block; eager frames must run there too
    with hop_probe.leaving_out(left_out):
        engine = Scheduler(talker, None, max_batch=1, max_len=256, max_text=32, fused=True, graphs=False)
        try:
            codes = engine.submit(plan, params, audio=False).result()[1].codes
        finally:
            engine.close()
    kind_of = {}
    for stage, layers in (("talker", talker.model.layers), ("predictor", talker.code_predictor.model.layers)):
        for layer in layers:
            qkv, gate_up = engine.ops.projections[layer]
            for kind, weight in (("qkv", qkv), ("o", layer.self_attn.o_proj.weight), ("gate_up", gate_up),
                                 ("down", layer.mlp.down_proj.weight)):
                kind_of[weight.data_ptr()] = f"{stage}:{kind}"
    assert codes.shape == (2, 16)
    every_kind = {f"{stage}:{kind}" for stage in ("talker", "predictor") for kind in hop_probe.PRODUCTS}
    assert {kind_of.get(ptr, "head") for ptr in launched} == every_kind - {left_out} | {"head"}
