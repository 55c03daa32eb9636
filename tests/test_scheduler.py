"""The engine (continuous batching over per-row state, sync-free graph-capturable frames) generates the
reference loop's codes, for every request whatever company it keeps and whenever it joins."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import torch

from qtts import kernels
from qtts.config import TTSConfig
from qtts.engine import reference
from qtts.engine.frame import LayerOps, prefill
from qtts.engine.rows import RowStore
from qtts.engine.scheduler import Scheduler
from qtts.errors import InputError
from qtts.models.talker import Talker
from qtts.prompt import PromptPlan, pad_batch
from qtts.sampling import SamplingParams
from qtts.testing.configs import tiny_tts_config

GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False)


pytestmark = pytest.mark.usefixtures("one_thread")


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


_engines: list[Scheduler] = []


@pytest.fixture(autouse=True)
def close_engines():
    """Each engine a test makes is closed after it: its thread would keep it, KV cache pool and all, alive
    for the rest of the run."""
    yield
    while _engines:
        _engines.pop().close()


def engine_for(talker: Talker, *, fused: bool = False, graphs: bool = False, max_len: int = 256,
               **options) -> Scheduler:
    engine = Scheduler(talker, None, max_len=max_len, max_text=32, fused=fused, graphs=graphs, **options)
    _engines.append(engine)
    return engine


def run(engine: Scheduler, batch: list[PromptPlan], params: SamplingParams, seeds=None) -> list[torch.Tensor]:
    """Submit every plan at once and wait for all: codes [frames, 16] per plan."""
    seeds = seeds or [None] * len(batch)
    generations = [engine.submit(plan, params, seed=seed, audio=False) for plan, seed in zip(batch, seeds)]
    return [g.result()[1].codes for g in generations]


def greedy(frames: int) -> SamplingParams:
    return replace(GREEDY, max_new_tokens=frames)


def wait_for_frames(engine: Scheduler, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while engine.stats["frames"] < count:
        assert time.monotonic() < deadline, "the engine made no progress"
        time.sleep(0.005)


@pytest.mark.parametrize("mtp_projection", [True, False])
def test_engine_gives_the_reference_codes_greedy_fp32(mtp_projection):
    talker = tiny_talker(mtp_projection=mtp_projection)
    batch = plans(talker)
    expected = [reference.generate_codes(talker, plan, greedy(12)) for plan in batch]
    got = run(engine_for(talker), batch, greedy(12))
    assert [c.shape for c in got] == [c.shape for c in expected] == [(11, 16)] * 2
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


@pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")
def test_engine_with_triton_kernels_gives_the_reference_codes():
    """The Triton kernels wired into the frame (interpreted on CPU, compiled on GPU) change no code."""
    talker = tiny_talker(seed=3, device="cpu" if kernels.interpreted() else "cuda")
    batch = plans(talker, seed=4)
    expected = [reference.generate_codes(talker, plan, greedy(3)) for plan in batch]
    got = run(engine_for(talker, fused=True, max_batch=2), batch, greedy(3))
    assert [c.shape for c in got] == [(2, 16)] * 2
    for g, e in zip(got, expected):
        assert torch.equal(g, e.cpu())


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.skipif(
    not kernels.available(), reason="Triton is not installed"))])
def test_prefill_equals_the_reference_prefill_whatever_the_left_padding(fused):
    """The engine pads prompts on the left to its prefill graph's length: that must change nothing."""
    device = "cuda" if fused and not kernels.interpreted() else "cpu"
    talker = tiny_talker(seed=5, device=device)
    embeds, valid, _ = pad_batch(plans(talker, lengths=((7, 1), (4, 1)), seed=6))
    store = RowStore(talker, 2, 2, 40, 2)
    state = reference.DecodeState(valid, 40, talker.config.vocab_size)
    talker.setup_caches(2, 40, device, embeds.dtype)
    hidden, logits = reference.prefill(talker, embeds, state)
    rows = store.staging_rows(2)
    for extra in (0, 5):
        with torch.inference_mode():  # as the engine runs it (the store's caches are views of one tensor)
            prefill(talker, LayerOps(fused), store, rows, torch.nn.functional.pad(embeds, (0, 0, extra, 0)),
                    torch.nn.functional.pad(valid, (extra, 0), value=False))
        torch.testing.assert_close(store.hidden[rows], hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(store.logits[rows], logits, rtol=1e-5, atol=1e-5)
        assert not store.caches[0].k.isnan().any()


def test_a_loaded_row_moves_with_its_state_and_its_cache_up_to_the_filled_rows():
    """`RowStore.load` writes each request's values into its row, and `move` carries every per-row tensor
    whole and the cache only up to `filled`: the batch's rows are packed by these two."""
    talker = tiny_talker(seed=3)
    hidden = talker.config.hidden_size
    store = RowStore(talker, 3, 2, 12, 4)
    params = [SamplingParams(temperature=0.7, top_k=5, repetition_penalty=1.1, min_new_tokens=3),
              SamplingParams(do_sample=False, subtalker_top_p=0.5, min_new_tokens=2)]
    trailing = [torch.randn(2, hidden), torch.randn(3, hidden)]
    tts_pad = torch.randn(hidden)
    staging = store.staging_rows(2)
    with torch.inference_mode():
        store.load(staging, 8, [3, 0], trailing, tts_pad, [11, 2**62], params, [False, True])
        store.kv.normal_()
        before = store.kv.clone()
        store.move(slice(1, 3), staging, filled=8)
    assert store.slot[1:3].flatten().tolist() == [8, 8]
    assert store.position[1:3].flatten().tolist() == [5, 8]
    assert store.first_row[1:3].tolist() == [3, 0] and store.step[1:3].tolist() == [0, 0]
    assert store.seeds[1:3].tolist() == [11, 2**62]
    assert store.text_len[1:3].tolist() == [2, 3] and store.text_open[1:3].tolist() == [False, True]
    assert torch.equal(store.text[1, :2], trailing[0]) and torch.equal(store.text[2, :3], trailing[1])
    assert torch.equal(store.text[1, 2:], tts_pad.expand(3, -1)) and torch.equal(store.text[2, 3:], tts_pad.expand(2, -1))
    sampling = store.sampling
    for tensor, row in zip(sampling.tensors(), zip(*(sampling.values(p) for p in params))):
        assert tensor[1:3].tolist() == pytest.approx(list(row))
    assert torch.equal(store.kv[:, :, 1:3, :, :8], before[:, :, staging, :, :8])
    assert torch.equal(store.kv[:, :, 1:3, :, 8:], before[:, :, 1:3, :, 8:])  # past `filled`: untouched
    assert torch.equal(store.kv[:, :, 0], before[:, :, 0])


def test_fused_projection_weights_change_no_code_and_no_state_dict():
    talker = tiny_talker(seed=12)
    state = {k: v.clone() for k, v in talker.state_dict().items()}
    batch = plans(talker, seed=13)
    expected = [reference.generate_codes(talker, plan, greedy(6)) for plan in batch]
    engine = engine_for(talker)
    from qtts.engine.fused_weights import fuse_projections
    fuse_projections(talker)
    got = run(engine, batch, greedy(6))
    layer = talker.model.layers[0].self_attn
    assert layer.k_proj.weight.untyped_storage().data_ptr() == layer.q_proj.weight.untyped_storage().data_ptr()
    after = talker.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    # the reference path still runs on the re-pointed weights
    assert all(torch.equal(reference.generate_codes(talker, plan, greedy(6)), e) for plan, e in zip(batch, expected))


def eos_prone_talker(seed: int) -> Talker:
    talker = tiny_talker(seed=seed)
    with torch.no_grad():  # make EOS likely once min_new_tokens allows it
        talker.codec_head.weight[talker.config.codec_eos_token_id] *= 6
    return talker


def test_rows_stop_at_eos_like_the_reference_and_leave_the_batch():
    talker = eos_prone_talker(5)
    batch = plans(talker, lengths=((5, 2), (9, 1), (3, 4)), seed=6)
    expected = [reference.generate_codes(talker, plan, greedy(30)) for plan in batch]
    engine = engine_for(talker)
    got = run(engine, batch, greedy(30))
    assert any(c.shape[0] < 29 for c in expected)  # the test only proves something if EOS came
    assert [c.shape for c in got] == [c.shape for c in expected]
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    assert engine.running == 0 and engine.stats["reasons"]["stop"] >= 1


def test_requests_with_different_settings_share_the_frames_and_each_match_the_reference():
    """Every setting is per row: min_new_tokens, greedy or sampled, temperature, top-k, top-p, penalty."""
    talker = eos_prone_talker(5)
    plan = plans(talker, lengths=((5, 2),), seed=6)[0]
    settings = [replace(greedy(30), min_new_tokens=2), replace(greedy(30), min_new_tokens=12),
                SamplingParams(max_new_tokens=20, seed=3),
                SamplingParams(max_new_tokens=20, seed=3, temperature=0.7, top_k=5, top_p=0.8,
                               repetition_penalty=1.3, subtalker_top_k=3, subtalker_top_p=0.9)]
    expected = [reference.generate_codes(talker, plan, params) for params in settings]
    engine = engine_for(talker)
    generations = [engine.submit(plan, params, audio=False) for params in settings]
    got = [g.result()[1].codes for g in generations]
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    assert got[0].shape[0] < 11 <= got[1].shape[0]  # min_new_tokens took effect per row
    assert not torch.equal(got[2], got[3])  # the sampled rows' settings took effect
    assert engine.stats["frames"] <= max(c.shape[0] for c in got) + 4  # one frame served every row


@pytest.mark.parametrize("sampled", [False, True])
def test_a_request_gets_the_same_codes_whenever_it_joins_a_running_batch(sampled):
    """Same answer in any company: alone, or joining others at several frames, a request's codes are
    identical; seeded sampling draws the same noise whatever shares the batch."""
    talker = tiny_talker(seed=7)
    mine, *others = plans(talker, lengths=((6, 3), (8, 5), (4, 2), (7, 7), (5, 1)), seed=8)
    params = SamplingParams(max_new_tokens=16, seed=11) if sampled else greedy(16)
    alone = reference.generate_codes(talker, mine, params)
    engine = engine_for(talker)
    for join_at in (0, 3, 9):
        before = engine.stats["frames"]
        company = [engine.submit(plan, replace(params, max_new_tokens=30, seed=row), audio=False)
                   for row, plan in enumerate(others)]
        wait_for_frames(engine, before + join_at)
        assert torch.equal(engine.submit(mine, params, audio=False).result()[1].codes, alone)
        for generation in company:
            generation.result()


def test_unseeded_requests_differ_and_seeded_ones_repeat():
    talker = tiny_talker(seed=7)
    plan = plans(talker, lengths=((6, 3),), seed=8)[0]
    engine = engine_for(talker)
    params = SamplingParams(max_new_tokens=8)
    first, second = run(engine, [plan, plan], params)
    assert not torch.equal(first, second)
    a, b = run(engine, [plan, plan], params, seeds=[12, 12])
    assert torch.equal(a, b)
    assert int(a[:, 1:].max()) < 2048 and int(a[:, 0].max()) < 2048


def test_cancelled_request_leaves_within_a_frame_and_others_go_on():
    talker = tiny_talker(seed=9)
    long, short = plans(talker, lengths=((6, 3), (5, 2)), seed=10)
    engine = engine_for(talker, max_len=512)
    endless = engine.submit(long, replace(greedy(400), min_new_tokens=400), audio=False)
    wait_for_frames(engine, 3)
    endless.cancel()
    _, finished = endless.result()
    assert finished.reason == "cancelled" and finished.codes.shape[0] < 3 + 4
    assert torch.equal(engine.submit(short, greedy(6), audio=False).result()[1].codes,
                       reference.generate_codes(talker, short, greedy(6)))
    assert engine.running == 0


def test_a_request_whose_prefill_fails_gets_the_error_and_the_engine_goes_on():
    talker = tiny_talker(seed=9)
    good = plans(talker, seed=10)[0]
    # a caller's bug the engine meets only in the prefill: a prompt one column wider than the talker
    wrong_width = replace(good, prefill=torch.randn(5, good.prefill.shape[1] + 1))
    engine = engine_for(talker)
    failed = engine.submit(wrong_width, greedy(4), audio=False)
    errors = []

    def wait():
        try:
            failed.result()
        except RuntimeError as error:
            errors.append(error)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout=30)  # it was out of the inbox and not yet in the batch: it used to wait forever
    assert not waiter.is_alive() and len(errors) == 1
    assert torch.equal(engine.submit(good, greedy(6), audio=False).result()[1].codes,
                       reference.generate_codes(talker, good, greedy(6)))
    assert engine.running == 0


def test_runaway_budget_ends_a_request_with_its_own_reason():
    talker = tiny_talker(seed=9)
    plan = replace(plans(talker, lengths=((6, 3),), seed=10)[0], text_tokens=1)
    engine = engine_for(talker, max_len=512)
    _, finished = engine.submit(plan, replace(greedy(300), min_new_tokens=300), audio=False).result()
    assert finished.reason == "budget" and finished.codes.shape[0] == 65  # 50 + 15 per token


def test_one_token_limit_gives_no_frames_like_the_reference():
    talker = tiny_talker(seed=14)
    batch = plans(talker, seed=15)
    expected = [reference.generate_codes(talker, plan, greedy(1)) for plan in batch]
    got = run(engine_for(talker), batch, greedy(1))
    assert [c.shape for c in got] == [c.shape for c in expected] == [(0, 16)] * 2


def test_a_request_ends_where_its_cache_does_and_a_prompt_that_fills_it_is_refused():
    talker = tiny_talker(seed=14)
    plan = plans(talker, seed=15)[0]  # 7 positions: one 64-position prefill bucket
    engine = engine_for(talker, max_len=128)
    _, finished = engine.submit(plan, replace(greedy(10**6), min_new_tokens=10**6), audio=False).result()
    assert finished.reason == "length" and finished.codes.shape[0] == 128 - 64 - 1
    from qtts.errors import InputError
    with pytest.raises(InputError, match="no room for speech"):
        engine_for(talker, max_len=70).submit(plan, greedy(4), audio=False)
    with pytest.raises(InputError, match="no codec decoder"):
        engine.submit(plan, greedy(4))


@pytest.mark.gpu
def test_graph_frames_run_without_host_sync_and_match_eager():
    talker = tiny_talker(seed=9, device="cuda")
    batch = plans(talker, seed=10)
    for params in (greedy(12), SamplingParams(max_new_tokens=12, seed=3)):
        expected = [reference.generate_codes(talker, plan, params) for plan in batch]
        eager = run(engine_for(talker, fused=True), batch, params)
        engine = engine_for(talker, fused=True, graphs=True)
        got = run(engine, batch, params)
        for g, e, r in zip(got, eager, expected):
            assert torch.equal(g, e)
            assert torch.equal(g, r.cpu())
        frame = engine.frames[engine.buckets[0]]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                engine._run_frame[frame.batch].step()
        finally:
            torch.cuda.set_sync_debug_mode(0)


@pytest.mark.gpu
@pytest.mark.parametrize("sampled", [False, True])
def test_on_the_gpu_a_request_gets_the_same_codes_whenever_it_joins(sampled):
    """Same answer in any company with the captured graphs and fused kernels, float32, on the GPU."""
    talker = tiny_talker(seed=7, device="cuda")
    mine, *others = plans(talker, lengths=((6, 3), (8, 5), (4, 2), (7, 7), (5, 1)), seed=8)
    params = SamplingParams(max_new_tokens=16, seed=11) if sampled else greedy(16)
    engine = engine_for(talker, fused=True, graphs=True)
    alone = engine.submit(mine, params, audio=False).result()[1].codes
    for join_at in (0, 3, 9):
        before = engine.stats["frames"]
        company = [engine.submit(plan, replace(params, max_new_tokens=30, seed=row), audio=False)
                   for row, plan in enumerate(others * 3)]
        wait_for_frames(engine, before + join_at)
        assert torch.equal(engine.submit(mine, params, audio=False).result()[1].codes, alone)
        for generation in company:
            generation.result()


@pytest.mark.parametrize("sampled", [False, True])
def test_a_row_waits_in_the_batch_for_text_and_then_says_what_it_would_have_said_at_once(sampled):
    """Text that arrives while it is spoken: a request whose text track is still open waits inside the
    running batch when its frames catch up with its text (its frames change nothing meanwhile), and resumes
    when more comes. Its codes equal those of the same track given whole; the rows beside it go on and
    keep their own codes."""
    talker = tiny_talker(seed=3)
    whole, other = plans(talker, lengths=((6, 9), (5, 4)), seed=4)
    params = SamplingParams(max_new_tokens=20, min_new_tokens=19, seed=5) if sampled else greedy(20)
    engine = engine_for(talker)
    expected = engine.submit(whole, params, audio=False).result()[1].codes
    other_alone = engine.submit(other, replace(params, max_new_tokens=40, min_new_tokens=0),
                                audio=False).result()[1].codes
    assert expected.shape[0] == 19

    track = whole.trailing
    opening = replace(whole, trailing=track[:2])
    company = engine.submit(other, replace(params, max_new_tokens=40, min_new_tokens=0), audio=False)
    live = engine.submit(opening, params, audio=False, text_open=True)
    request = live._request
    deadline = time.monotonic() + 60
    while request.enqueued < 2:  # it ran its two frames of text...
        assert time.monotonic() < deadline, "the engine made no progress"
        time.sleep(0.005)
    frames = engine.stats["frames"]
    wait_for_frames(engine, frames + 3)  # ...and the batch went on while it waited
    assert request.enqueued == 2
    engine.extend_text(live, track[2:5], tokens=3, final=False)
    engine.extend_text(live, track[5:], tokens=4, final=True)
    with pytest.raises(InputError, match="text has ended"):
        engine.extend_text(live, track[:1], tokens=1, final=True)
    assert torch.equal(live.result()[1].codes, expected)
    assert torch.equal(company.result()[1].codes, other_alone)


def test_a_request_waiting_for_text_can_be_cancelled():
    talker = tiny_talker(seed=3)
    (plan,) = plans(talker, lengths=((6, 2),), seed=4)
    engine = engine_for(talker)
    live = engine.submit(plan, greedy(20), audio=False, text_open=True)
    deadline = time.monotonic() + 60
    while live._request.enqueued < 2:
        assert time.monotonic() < deadline, "the engine made no progress"
        time.sleep(0.005)
    live.cancel()
    codes, finished = live.result()[1].codes, live.finished
    assert finished.reason == "cancelled" and codes.shape[0] == 2
    assert engine.running == 0


def hold_rows(engine: Scheduler, talker: Talker, count: int) -> list:
    """`count` requests that take rows and wait there for text that never comes (no frames run)."""
    (plan,) = plans(talker, lengths=((6, 2),), seed=4)
    held = [engine.submit(plan, greedy(20), audio=False, text_open=True) for _ in range(count)]
    deadline = time.monotonic() + 60
    while engine.running < count or any(g._request.enqueued < 2 for g in held):
        assert time.monotonic() < deadline, "the engine made no progress"
        time.sleep(0.005)
    return held


def release(held: list) -> None:
    for generation in held:
        generation.cancel()
        generation.result()


def test_admission_refuses_a_request_that_would_put_the_batch_behind_real_time():
    talker = tiny_talker(seed=3)
    engine = engine_for(talker, max_batch=8)  # buckets of 4 and 8 rows
    assert engine.admission_delay(first_audio_target_s=1.0) is None  # idle: nobody to harm
    run(engine, plans(talker), greedy(12))
    assert engine.seconds_per_frame(2) > 0  # measured while the frames ran
    held = hold_rows(engine, talker, 4)  # a fifth request would need the 8-row bucket
    engine.frame_s = 0.08
    # Seconds per frame by bucket, as a device might measure them (REALTIME_SHARE of 80 ms is 64 ms):
    engine._seconds_per_frame = {4: 0.010, 8: 0.050}
    assert engine.admission_delay(first_audio_target_s=1.0) is None  # both keep up
    engine._seconds_per_frame = {4: 0.010, 8: 0.100}
    assert engine.admission_delay(first_audio_target_s=1.0) >= 1.0  # 4 rows keep up, 8 would not
    engine._seconds_per_frame = {4: 0.100, 8: 0.100}
    assert engine.admission_delay(first_audio_target_s=1.0) is None  # slower than real time at any size
    release(held)


def test_admission_refuses_a_request_whose_wait_for_a_row_would_miss_the_first_audio_target():
    talker = tiny_talker(seed=3)
    engine = engine_for(talker, max_batch=4)
    engine.frame_s = 1e3  # frames keep up whatever this machine does: only the queue decides
    short = [engine.submit(plan, greedy(3), audio=False) for plan in plans(talker) * 4]  # 8 for 4 rows
    held = hold_rows(engine, talker, 4)  # then every row taken: the batch stays full throughout
    for generation in short:
        generation.result()
    rate = engine.departure_rate()
    assert rate is not None and rate > 0
    assert engine.admission_delay(first_audio_target_s=1e3) is None  # one request ahead drains in time
    delay = engine.admission_delay(first_audio_target_s=1e-9)
    assert delay == pytest.approx(1 / engine.departure_rate())
    release(held)
