"""The fast frame (static buffers, sync-free, graph-capturable) generates the reference loop's codes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from qtts import kernels
from qtts.config import TTSConfig
from qtts.engine import fast, reference
from qtts.models.talker import Talker
from qtts.prompt import PromptPlan, pad_batch
from qtts.sampling import SamplingParams
from qtts.testing.configs import tiny_tts_config

GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls run ~10x faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_talker(seed: int = 0, mtp_projection: bool = True, device="cpu", dtype=torch.float32) -> Talker:
    torch.manual_seed(seed)
    config = TTSConfig.from_dict(tiny_tts_config("base", mtp_projection=mtp_projection))
    talker = Talker(config.talker_config, device=device, dtype=dtype)
    with torch.no_grad():
        for name, p in talker.named_parameters():
            if "norm" in name:  # norms start at ones: randomise so a misplaced one cannot hide
                p.uniform_(0.5, 1.5)
    return talker.eval()


def plans(talker: Talker, lengths=((7, 3), (4, 6)), seed: int = 1) -> list[PromptPlan]:
    """Random prompts of different lengths (the batch is left-padded) and trailing text tracks."""
    torch.manual_seed(seed)
    weight = talker.codec_head.weight
    hidden = weight.shape[1]
    pad = torch.randn(hidden, device=weight.device, dtype=weight.dtype)
    return [PromptPlan(torch.randn(n, hidden, device=weight.device, dtype=weight.dtype),
                       torch.randn(m, hidden, device=weight.device, dtype=weight.dtype), pad)
            for n, m in lengths]


@pytest.mark.parametrize("mtp_projection", [True, False])
def test_frame_gives_the_reference_codes_greedy_fp32(mtp_projection):
    talker = tiny_talker(mtp_projection=mtp_projection)
    batch = plans(talker)
    expected = reference.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=12)
    got = fast.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=12, graphs=False, fused=False)
    assert [c.shape for c in got] == [c.shape for c in expected] == [(11, 16)] * 2
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


@pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")
def test_frame_with_triton_kernels_gives_the_reference_codes():
    """The Triton kernels wired into the frame (interpreted on CPU, compiled on GPU) change no code."""
    talker = tiny_talker(seed=3, device="cpu" if kernels.interpreted() else "cuda")
    batch = plans(talker, seed=4)
    expected = reference.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=3)
    got = fast.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=3, graphs=False, fused=True)
    assert [c.shape for c in got] == [(2, 16)] * 2
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.skipif(
    not kernels.available(), reason="Triton is not installed"))])
def test_frame_prefill_equals_the_reference_prefill_whatever_the_left_padding(fused):
    """The fast engine pads prompts on the left to its prefill graph's length: that must change nothing."""
    device = "cuda" if fused and not kernels.interpreted() else "cpu"
    talker = tiny_talker(seed=5, device=device)
    embeds, valid, _ = pad_batch(plans(talker, lengths=((7, 1), (4, 1)), seed=6))
    frame = fast.Frame(talker, 2, 40, 4, 2, GREEDY, fused=fused)  # sets up the talker's caches
    state = reference.DecodeState(valid, 40, talker.config.vocab_size)
    hidden, logits = reference.prefill(talker, embeds, state)
    for extra in (0, 5):
        frame.prefill(torch.nn.functional.pad(embeds, (0, 0, extra, 0)),
                      torch.nn.functional.pad(valid, (extra, 0), value=False))
        torch.testing.assert_close(frame.hidden, hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(frame.logits, logits, rtol=1e-5, atol=1e-5)
        assert not frame.talker.model.layers[0].self_attn.kv_cache.k.isnan().any()


def test_fused_projection_weights_change_no_code_and_no_state_dict():
    talker = tiny_talker(seed=12)
    state = {k: v.clone() for k, v in talker.state_dict().items()}
    batch = plans(talker, seed=13)
    expected = reference.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=6)
    got = fast.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=6, graphs=False, fused=False,
                                    fuse_weights=True)
    layer = talker.model.layers[0].self_attn
    assert layer.k_proj.weight.untyped_storage().data_ptr() == layer.q_proj.weight.untyped_storage().data_ptr()
    after = talker.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    # the reference path still runs on the re-pointed weights
    assert all(torch.equal(a, b) for a, b in zip(
        reference.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=6), expected))


def test_rows_stop_at_eos_like_the_reference():
    talker = tiny_talker(seed=5)
    with torch.no_grad():  # make EOS likely once min_new_tokens allows it
        talker.codec_head.weight[talker.config.codec_eos_token_id] *= 6
    batch = plans(talker, lengths=((5, 2), (9, 1), (3, 4)), seed=6)
    expected = reference.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=30)
    got = fast.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=30, graphs=False, fused=False)
    assert any(c.shape[0] < 29 for c in expected)  # the test only proves something if EOS came
    assert [c.shape for c in got] == [c.shape for c in expected]
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_requests_that_differ_in_min_new_tokens_share_the_frame_and_match_the_reference():
    """min_new_tokens is loaded per request: a captured frame serves any value without being rebuilt."""
    talker = tiny_talker(seed=5)
    with torch.no_grad():  # make EOS likely once min_new_tokens allows it
        talker.codec_head.weight[talker.config.codec_eos_token_id] *= 6
    batch = plans(talker, lengths=((5, 2), (9, 1)), seed=6)
    requests = [replace(GREEDY, min_new_tokens=n) for n in (2, 12, 2)]
    # the reference loop re-allocates the talker's caches, which rebuilds a frame: run it first
    expected = [reference.generate_codes_batch(talker, batch, params, max_new_tokens=30) for params in requests]
    engine = fast.FastEngine(talker, graphs=False, fused=False)
    frames = []
    lengths = []
    for params, want in zip(requests, expected):
        got = engine.generate_codes_batch(batch, params, max_new_tokens=30)
        assert [c.shape for c in got] == [c.shape for c in want]
        for g, e in zip(got, want):
            assert torch.equal(g, e)
        frames.append(engine._frame)
        lengths.append(min(c.shape[0] for c in got))
    assert frames[0] is frames[1] is frames[2]
    assert lengths[0] < 11 <= lengths[1]  # the value took effect: EOS came early only where it was allowed


def test_sampling_is_seeded_per_request():
    talker = tiny_talker(seed=7)
    batch = plans(talker, lengths=((6, 3), (6, 3)), seed=8)
    batch[1] = batch[0]  # the same prompt twice: only the seeds differ
    params = SamplingParams(seed=11)
    first = fast.generate_codes_batch(talker, batch, params, max_new_tokens=8, graphs=False, fused=False,
                                      seeds=[11, 12])
    again = fast.generate_codes_batch(talker, batch, params, max_new_tokens=8, graphs=False, fused=False,
                                      seeds=[11, 12])
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])
    assert all(int(c[:, 1:].max()) < 2048 and int(c[:, 0].max()) < 2048 for c in first)


@pytest.mark.gpu
def test_graph_frames_run_without_host_sync_and_match_eager():
    talker = tiny_talker(seed=9, device="cuda")
    batch = plans(talker, seed=10)
    expected = reference.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=12)
    for params in (GREEDY, SamplingParams(seed=3)):
        frame = fast.Frame(talker, 2, 64, 16, 8, params)
        graph = fast.FrameGraph(frame)
        watch = fast.FrameWatch(frame)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for index in range(10):
                graph()
                watch.after_frame(index)
                watch.landed()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        assert int(frame.step_count) == 13  # 3 warm-up frames at capture, then 10 replays
    got = fast.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=12)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_one_token_limit_gives_no_frames_like_the_reference():
    talker = tiny_talker(seed=14)
    batch = plans(talker, seed=15)
    expected = reference.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=1)
    got = fast.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=1, graphs=False, fused=False)
    assert [c.shape for c in got] == [c.shape for c in expected] == [(0, 16)] * 2


def test_fast_engine_rebuilds_its_frame_when_the_talker_caches_change():
    talker = tiny_talker(seed=12)
    batch = plans(talker, lengths=((6, 3),), seed=13)
    engine = fast.FastEngine(talker, graphs=False, fused=False)
    first = engine.generate_codes_batch(batch, GREEDY, max_new_tokens=8)
    kept = engine._frame
    engine.generate_codes_batch(batch, GREEDY, max_new_tokens=6)
    assert engine._frame is kept  # a request that fits reuses the frame
    expected = reference.generate_codes_batch(talker, batch, GREEDY, max_new_tokens=8)  # new caches
    again = engine.generate_codes_batch(batch, GREEDY, max_new_tokens=8)
    assert engine._frame is not kept
    assert all(torch.equal(a, b) and torch.equal(a, e) for a, b, e in zip(first, again, expected))
