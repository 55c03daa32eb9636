"""Each fused kernel computes the same function as its PyTorch reference on random inputs.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (qtts.kernels sets TRITON_INTERPRET);
with one, the same tests run compiled on CUDA (marked gpu).
"""

from __future__ import annotations

import pytest
import torch

from qtts import kernels
from qtts.kernels import jit, round_to, tl
from qtts.errors import InputError
from qtts.kernels.codebook import codebook_sum_reference, codebook_sum_triton
from qtts.kernels.decode_attention import decode_attention_reference, decode_attention_triton
from qtts.kernels.linear import (
    DECODE_CONFIGS, GRID_Y_MAX, ROWS_PER_PROGRAM_MAX, TILE_SCRATCH_BYTES, fused_linear_reference, fused_linear_triton,
    tile_config,
)
from qtts.kernels.qk_norm_rope import qk_norm_rope_cache_reference, qk_norm_rope_cache_triton
from qtts.kernels.rms_norm import add_rms_norm, add_rms_norm_reference, add_rms_norm_triton
from qtts.kernels.rope import rope_reference, rope_triton
from qtts.kernels.sample import exponential_noise, sample_codes_reference, sample_codes_triton
from qtts.sampling import DrawSettings
from qtts.kernels.snake import (
    residual_add_reference, residual_add_triton, snake_beta_reference, snake_beta_triton,
)
from qtts.kernels.swiglu import (
    silu_mul_halves_reference, silu_mul_halves_triton, silu_mul_reference, silu_mul_triton,
)
from qtts.models.layers import RMSNorm, rope_cos_sin, rope_inverse_frequencies

pytestmark = pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")

if kernels.interpreted():
    DEVICES = ["cpu"]
else:
    DEVICES = [pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else []
DTYPES = [torch.float32, torch.bfloat16]


def assert_same_function(out: torch.Tensor, ref: torch.Tensor):
    """float32: agreement to ~1e-6 relative; bfloat16: within one rounding. Where a sum nearly cancels
    (RoPE's rotation), one rounding of a term is a large relative change, hence the absolute term."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert not out.isnan().any()
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)
    else:
        torch.testing.assert_close(out.float(), ref.float(), rtol=2**-7, atol=2**-8 * ref.float().abs().max().item())


def assert_same_snake(out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor):
    """snake_beta_triton's `out` against the reference on `x` [B, C, T]. In float32 the kernel's exps of alpha
    and beta (a fast exp) may differ from torch's by a few ulps. Sin's argument x * exp(alpha), tens of
    radians, carries alpha's error; since d sin^2 / d arg = sin(2 arg) <= 1, an output moves by up to
    (|x * exp(alpha)| + 1) * ulps / exp(beta), the 1 for beta's. Outside the plain tolerance on an H100 in
    18 of 300 seeds of the time-major test: by 2-3e-6, at arguments 2-11 and 1 / exp(beta) 2-4."""
    ref = snake_beta_reference(x, alpha, beta).to(x.dtype)
    if out.dtype != torch.float32:
        return assert_same_function(out, ref)
    assert out.dtype == ref.dtype and out.shape == ref.shape and not out.isnan().any()
    slack = 4 * 2**-23 * ((x * alpha.exp()[:, None]).abs() + 1) / beta.exp()[:, None]
    assert ((out - ref).abs() <= 2e-6 + 2e-6 * ref.abs() + slack).all()


@jit
def _round_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, round_to(tl.load(x_ptr + offs), out_ptr.dtype.element_ty))


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_round_to_bfloat16_as_pytorch_does(device):
    """Every kernel rounds its float32 results with `round_to`: nearest even, ties included, as PyTorch's
    cast (the interpreter's own cast truncates)."""
    ulp = 2.0**-7  # of bfloat16 in [1, 2)
    ties = torch.tensor([1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + ulp / 2), -(1 + 3 * ulp / 2)])
    near = torch.tensor([1 + ulp / 2 + 2**-20, 1 + ulp / 2 - 2**-20, 3.0e38, -1.0e-30, 0.0, -0.0])
    x = torch.cat([ties, near, torch.randn(1024 - 10) * 100]).to(device)
    out = torch.empty(1024, device=device, dtype=torch.bfloat16)
    _round_kernel[(1,)](x, out, BLOCK=1024)
    assert torch.equal(out, x.to(torch.bfloat16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [1024, 96])
def test_add_rms_norm_matches_reference(device, dtype, cols):
    x = torch.randn(6, cols, device=device).to(dtype)
    residual = torch.randn(6, cols, device=device).to(dtype)
    weight = (1 + 0.3 * torch.randn(cols, device=device)).to(dtype)
    out, summed = add_rms_norm_triton(x, weight, 1e-6, residual)
    ref_out, ref_summed = add_rms_norm_reference(x, weight, 1e-6, residual)
    assert torch.equal(summed, ref_summed)  # the residual stream rounds exactly as eager
    assert_same_function(out, ref_out)
    alone, same_x = add_rms_norm_triton(x, weight, 1e-6)
    assert same_x is x
    assert_same_function(alone, add_rms_norm_reference(x, weight, 1e-6)[0])
    # a scaled branch (the codec transformer's LayerScale): the stream is residual + scale * x, as eager
    scale = (0.01 * torch.randn(cols, device=device)).to(dtype)
    out, summed = add_rms_norm_triton(x, weight, 1e-6, residual, scale)
    ref_out, ref_summed = add_rms_norm_reference(x, weight, 1e-6, residual, scale)
    assert torch.equal(ref_summed, residual + scale * x)
    if dtype == torch.float32:  # the compiled kernel may fuse the product and the add (one rounding fewer)
        assert_same_function(summed, ref_summed)
    else:
        assert torch.equal(summed, ref_summed)
    assert_same_function(out, ref_out)


def test_rms_norm_reference_is_the_official_norm():
    norm = RMSNorm(48, eps=1e-6, dtype=torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(5, 48).to(torch.bfloat16)
    assert torch.equal(add_rms_norm_reference(x, norm.weight, 1e-6)[0], norm(x))


def test_dispatch_uses_the_reference_off_gpu():
    assert not kernels.enabled("cpu")
    x, w = torch.randn(3, 32), torch.randn(32)
    assert torch.equal(add_rms_norm(x, w, 1e-6)[0], add_rms_norm_reference(x, w, 1e-6)[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [128, 16])
@pytest.mark.parametrize("heads", [None, 1, 4])  # heads per program: the default's, one, groups with a partial one
def test_qk_norm_rope_cache_matches_reference(device, dtype, head_dim, heads):
    batch, seq, n_q, n_kv, cache_len = 2, 3, 6, 3, 24
    # q, k, v as strided views of one fused projection output, as a caller may pass them
    qkv = torch.randn(batch, seq, (n_q + 2 * n_kv) * head_dim, device=device).to(dtype)
    q, k, v = qkv.split([n_q * head_dim, n_kv * head_dim, n_kv * head_dim], dim=-1)
    q, k, v = (t.unflatten(-1, (-1, head_dim)) for t in (q, k, v))
    q_weight = (1 + 0.3 * torch.randn(head_dim, device=device)).to(dtype)
    k_weight = (1 + 0.3 * torch.randn(head_dim, device=device)).to(dtype)
    inv_freq = rope_inverse_frequencies(head_dim, 1e6, device=device)
    positions = torch.randint(0, 5000, (batch, seq), device=device)  # large angles: RoPE accuracy matters
    cache_index = torch.stack([torch.randperm(cache_len, device=device)[:seq] for _ in range(batch)])
    caches = [torch.full((batch, n_kv, cache_len, head_dim), float("nan"), device=device, dtype=dtype)
              for _ in range(4)]
    q_out = qk_norm_rope_cache_triton(q, k, v, q_weight, k_weight, 1e-6, inv_freq, positions,
                                      caches[0], caches[1], cache_index, heads=heads)
    q_ref = qk_norm_rope_cache_reference(q, k, v, q_weight, k_weight, 1e-6, inv_freq, positions,
                                         caches[2], caches[3], cache_index)
    assert_same_function(q_out, q_ref)
    for out, ref in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(out.isnan(), ref.isnan())  # the same rows written, no others
        assert_same_function(out.nan_to_num(), ref.nan_to_num())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("steps", [1, 3, 71])  # a chunk's queries, a window of keys (two blocks of steps)
def test_rope_matches_reference(device, dtype, steps):
    # queries as the codec's attention has them: a strided view [B, H, T, D] of one projection's output
    x = torch.randn(2, steps, 4 * 64, device=device).to(dtype).view(2, steps, 4, 64).transpose(1, 2)
    cos, sin = rope_cos_sin(torch.arange(steps + 5, device=device)[None], rope_inverse_frequencies(64, 1e4, device),
                            dtype)
    cos, sin = cos[0, -steps:], sin[0, -steps:]  # the last positions of a table, as a chunk's queries take
    assert_same_function(rope_triton(x, cos, sin), rope_reference(x, cos, sin))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("books", [1, 15])  # the codec's two groups
def test_codebook_sum_matches_reference(device, dtype, books):
    size, dim = 64, 96
    sums = torch.randn(books, size, dim, device=device).to(dtype)
    usage = torch.rand(books, size, device=device).to(dtype)
    usage[:, :4] = 0.0  # unused codes: the clamp's floor divides
    codes = torch.randint(0, size, (2, 3, books), device=device)
    codes[0, 0] = 1
    out = codebook_sum_triton(codes, sums, usage, 1e-5)
    ref = codebook_sum_reference(codes, sums, usage, 1e-5)
    assert out.shape == (2, 3, dim)
    assert torch.equal(out, ref)  # each quotient and partial sum rounds as eager


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_reference(device, dtype):
    gate = (3 * torch.randn(3, 5, 1100, device=device)).to(dtype)
    up = torch.randn(3, 5, 1100, device=device).to(dtype)
    assert_same_function(silu_mul_triton(gate, up), silu_mul_reference(gate, up))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_snake_beta_matches_reference(device, dtype):
    x = (2 * torch.randn(2, 6, 1500, device=device)).to(dtype)
    alpha = 0.5 * torch.randn(6, device=device)
    beta = 0.5 * torch.randn(6, device=device)
    assert_same_snake(snake_beta_triton(x, alpha, beta), x, alpha, beta)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_snake_beta_with_a_bias_into_a_padded_buffer(device, dtype):
    """The decoder's fused form: a conv output cut to its valid samples (read in place), its bias added
    first, the activation written behind the left context of the next conv's input."""
    conv_out = (2 * torch.randn(2, 6, 1600, device=device)).to(dtype)
    x = conv_out[..., :1500]
    alpha, beta, bias = (0.5 * torch.randn(6, device=device) for _ in range(3))
    buffer = torch.full((2, 6, 1510), 7.0, device=device, dtype=dtype)
    out = snake_beta_triton(x, alpha, beta, bias, out=buffer[..., 4:1504])
    biased = (x.float() + bias[:, None]).to(dtype)
    assert_same_snake(out, biased, alpha, beta)
    assert out.data_ptr() == buffer[..., 4:].data_ptr()
    assert buffer[..., :4].eq(7).all() and buffer[..., 1504:].eq(7).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_snake_beta_keeps_the_time_major_layout(device, dtype):
    """The fused decoder's activations lie [B, T, C] in memory: snake reads them so, a conv output cut to
    its valid samples included, and writes a new tensor, or a left-padded buffer's view, laid out alike."""
    conv_out = (2 * torch.randn(2, 1600, 130, device=device)).to(dtype).transpose(1, 2)
    x = conv_out[..., :1500]
    alpha, beta, bias = (0.5 * torch.randn(130, device=device) for _ in range(3))
    biased = (x.float() + bias[:, None]).to(dtype)
    out = snake_beta_triton(x, alpha, beta, bias)
    assert out.stride(1) == 1
    assert_same_snake(out, biased, alpha, beta)
    buffer = torch.full((2, 1510, 130), 7.0, device=device, dtype=dtype).transpose(1, 2)
    out = snake_beta_triton(x, alpha, beta, bias, out=buffer[..., 4:1504])
    assert_same_snake(out, biased, alpha, beta)
    assert buffer[..., :4].eq(7).all() and buffer[..., 1504:].eq(7).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("time_major", [False, True])
def test_residual_add_matches_reference(device, dtype, time_major):
    x, update = ((2 * torch.randn(2, 6, 1500, device=device)).to(dtype) for _ in range(2))
    if time_major:  # the sum is laid out as the update
        update = update.transpose(1, 2).contiguous().transpose(1, 2)
    bias = torch.randn(6, device=device)
    want = residual_add_reference(x.float(), update.float(), bias).to(dtype)  # one rounding, as fused
    got = residual_add_triton(x, update, bias)
    assert_same_function(got, want)
    assert got.stride() == update.stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq", [1, 2])
@pytest.mark.parametrize("head_dim", [128, 8])
@pytest.mark.parametrize("splits", [1, 4])
def test_decode_attention_matches_reference(device, dtype, seq, head_dim, splits):
    batch, n_q, n_kv, cache_len = 3, 4, 2, 200  # with 4 splits, up to 3 of them hold rows
    q = torch.randn(batch, n_q, seq, head_dim, device=device).to(dtype)
    k_cache = torch.randn(batch, n_kv, cache_len, head_dim, device=device).to(dtype)
    v_cache = torch.randn(batch, n_kv, cache_len, head_dim, device=device).to(dtype)
    lengths = torch.tensor([seq, 170, cache_len], device=device, dtype=torch.int32)
    starts = torch.tensor([0, 3, 35], device=device, dtype=torch.int32)  # left padding before each start
    # rows outside each [start, length) are garbage that must not be read
    for b, (first, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
        for cache in (k_cache, v_cache):
            cache[b, :, n:] = float("nan")
            cache[b, :, :first] = float("nan")
    scale = head_dim**-0.5
    out = decode_attention_triton(q, k_cache, v_cache, lengths, scale, starts, splits)
    ref = decode_attention_reference(q, k_cache.nan_to_num(), v_cache.nan_to_num(), lengths, scale, starts)
    assert_same_function(out, ref)
    no_padding = decode_attention_triton(q, k_cache.nan_to_num(), v_cache.nan_to_num(), lengths, scale,
                                         splits=splits)
    assert_same_function(no_padding, decode_attention_reference(q, k_cache.nan_to_num(), v_cache.nan_to_num(),
                                                                lengths, scale))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("splits", [1, 2])
def test_a_query_that_sees_no_row_attends_to_zeros(device, splits):
    # A left-padded prefill: queries 0 and 1 of row 0 sit before its first valid row and see nothing.
    seq, head_dim = 6, 16
    q = torch.randn(2, 4, seq, head_dim, device=device)
    k_cache, v_cache = (torch.randn(2, 2, 64, head_dim, device=device) for _ in range(2))
    lengths = torch.tensor([seq, seq], device=device, dtype=torch.int32)
    starts = torch.tensor([2, 0], device=device, dtype=torch.int32)
    ref = decode_attention_reference(q, k_cache, v_cache, lengths, 0.25, starts)
    out = decode_attention_triton(q, k_cache, v_cache, lengths, 0.25, starts, splits)
    assert torch.equal(ref[0, :2], torch.zeros_like(ref[0, :2]))
    assert ref[:, 2:].abs().sum(-1).gt(0).all()
    assert_same_function(out, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("talker", [True, False])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_codes_matches_reference(device, talker, ties, dtype):
    """Same ids as the PyTorch processors + exponential-trick draw with the same counter-based noise, every
    row with its own settings (greedy, top-k, top-p, both, temperature, penalty, min_new_tokens), with many
    logits tied at the top-k threshold (`ties`: rounded logits), which top-k keeps, as torch does. Seeded:
    top-p sums the kept mass in another order than torch's cumsum, so a token whose cumulative mass lies
    within float rounding of the threshold may be kept by one and dropped by the other: seen at temperature
    1.3 with top-p 0.95 and no top-k, where 3072 nearly equal probabilities sit at the boundary.

    The kernel draws over every token first and looks for top-k's threshold only where that draw's winner
    is not among the k largest (bf16 predictor logits: on 16-bit keys); both cases occur here. The logits
    are drawn on the CPU for every device: CUDA's generator gave ones where a top-p row's threshold fell
    within rounding of a tie (the kernel before this one differed from torch there too)."""
    torch.manual_seed(0)
    vocab = 3072 if talker else 2048
    batch = 6
    logits = 3 * torch.randn(batch, vocab)
    if ties:
        logits = logits.round() - 4  # mostly negative, few distinct values
    seeds = torch.tensor([0, 1, 7, 2**40, 2**62 + 3, 5], device=device)
    settings = DrawSettings(
        do_sample=torch.tensor([True, True, True, False, True, True], device=device),
        temperature=torch.tensor([0.9, 1.0, 0.7, 0.9, 0.8, 0.5], device=device),
        top_k=torch.tensor([10, 0, 50, 10, 40, 3], device=device),
        top_p=torch.tensor([1.0, 0.8, 0.6, 1.0, 0.95, 1.0], device=device))
    no_top_k = DrawSettings(settings.do_sample, settings.temperature, torch.zeros_like(settings.top_k),
                            settings.top_p)
    kwargs = {}
    if talker:
        eos = vocab - 20
        kwargs = dict(seen=(torch.rand(batch, vocab) < 0.2).to(device),
                      generated=torch.tensor([1, 5, 0, 3, 1, 9], device=device),
                      penalty=torch.tensor([1.05, 1.0, 1.3, 1.05, 1.05, 1.1], device=device),
                      min_new_tokens=torch.tensor([2, 2, 0, 2, 2, 2], device=device), eos_id=eos,
                      suppress_from=vocab - 30)
        logits[:, eos] = 50  # EOS wins where min_new_tokens does not mask it
    logits = logits.to(device, dtype)
    top_k_only = [0, 5]  # rows that sample with top-k and no top-p
    kept, dropped = 0, 0
    for frame in range(6):
        counter = torch.tensor([frame, frame + 1, 0, 4, frame, 2], device=device) + 3 * frame
        ids = sample_codes_triton(logits, seeds, counter, settings, counter_scale=16, counter_offset=5,
                                  radix_bits=(1, 2, 4)[frame % 3], **kwargs)
        expected = sample_codes_reference(logits, seeds, counter * 16 + 5, settings, **kwargs)
        assert torch.equal(ids, expected)
        # the winner over every token is top-k's exactly where it is among the k largest
        unrestricted = sample_codes_reference(logits, seeds, counter * 16 + 5, no_top_k, **kwargs)
        same = (unrestricted == expected)[top_k_only]
        kept, dropped = kept + int(same.sum()), dropped + int((~same).sum())
    assert kept and dropped  # draws of both kinds ran
    table = torch.randn(vocab, 40, device=device).to(torch.bfloat16)
    ids, rows = sample_codes_triton(logits, seeds, counter, settings, embedding=table, **kwargs)
    assert torch.equal(rows, table[ids])  # the drawn codes' embeddings come with them


def test_exponential_noise_is_exp1_and_keyed_by_seed_and_counter():
    seeds = torch.tensor([0, 1, 2**40 + 5])
    noise = exponential_noise(seeds, torch.tensor(3), 20000)
    assert noise.shape == (3, 20000) and torch.isfinite(noise).all() and (noise > 0).all()
    assert abs(noise.mean().item() - 1) < 0.02 and abs(noise.var().item() - 1) < 0.05
    assert not torch.equal(noise[0], noise[1])
    assert not torch.equal(noise, exponential_noise(seeds, torch.tensor(4), 20000))
    assert torch.equal(noise, exponential_noise(seeds, torch.tensor(3), 20000))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_halves_matches_reference(device, dtype):
    gate_up = (3 * torch.randn(2, 3, 2 * 600, device=device)).to(dtype)
    assert_same_function(silu_mul_halves_triton(gate_up), silu_mul_halves_reference(gate_up))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 17, 70])
@pytest.mark.parametrize("kind", ["plain", "norm", "gated", "residual", "bias"])
def test_fused_linear_matches_reference(device, dtype, rows, kind):
    # Widths that are not multiples of the blocks, so the masked edges are exercised too.
    n, k = 40, 80
    x = torch.randn(rows, k, device=device).to(dtype)
    weight = (torch.randn(2 * n if kind == "gated" else n, k, device=device) / k**0.5).to(dtype)
    options = {}
    if kind in ("norm", "gated"):
        options["norm_weight"] = (1 + 0.3 * torch.randn(k, device=device)).to(dtype)
    if kind == "gated":
        options["gated"] = True
    if kind == "residual":
        options["residual"] = torch.randn(rows, n, device=device).to(dtype)
    if kind == "bias":
        options["bias"] = torch.randn(n, device=device).to(dtype)
    ref = fused_linear_reference(x, weight, **options)
    # small blocks: several output blocks and K steps with masked edges (a row kernel's, or a tile's)
    small = (16, 32, 4) if rows <= ROWS_PER_PROGRAM_MAX else (16, 16, 32, 4, 1)
    for config in [small, None]:
        assert_same_function(fused_linear_triton(x, weight, config=config, **options), ref)


# every batch product of the 0.6B and 1.7B models: (N, K, gated)
MODEL_PRODUCTS = [(4096, 1024, False), (1024, 2048, False), (3072, 1024, True), (1024, 3072, False),
                  (2048, 1024, False), (3072, 1024, False), (4096, 2048, False), (2048, 2048, False),
                  (6144, 2048, True), (2048, 6144, False)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", sorted(DECODE_CONFIGS))
def test_every_one_row_block_of_the_table_computes_the_product(device, shape):
    """Each measured block at its product's K (the part the block's loop and masks depend on), over three
    output blocks and a masked edge rather than all N outputs (the interpreter runs programs one by one)."""
    n, k, gated = shape
    block_n, block_k, warps = DECODE_CONFIGS[shape]
    n = 3 * block_n + 1
    for rows in (1, 2):
        x = torch.randn(rows, k, device=device)
        weight = torch.randn(2 * n if gated else n, k, device=device) / k**0.5
        norm = 1 + 0.3 * torch.randn(k, device=device)
        options = {"gated": True} if gated else {"residual": torch.randn(rows, n, device=device)}
        ref = fused_linear_reference(x, weight, norm_weight=norm, **options)
        out = fused_linear_triton(x, weight, norm_weight=norm, config=(block_n, block_k, warps), **options)
        assert_same_function(out, ref)

@pytest.mark.parametrize("shared_memory", [232448, 167936, 101376, 65536])  # H100/H200, A100, L4/RTX, small
@pytest.mark.parametrize("element_size", [2, 4])
def test_tile_configurations_fit_the_gpus_shared_memory(monkeypatch, shared_memory, element_size):
    """A tile program's pipelined loads must fit the GPU's shared memory, or the launch fails: on Hopper in
    bf16 the configurations are the measured ones; elsewhere, and in float32, they shrink to fit."""
    monkeypatch.setattr("qtts.kernels.linear.interpreted", lambda: False)
    for rows in (3, 16, 64, 128):
        for n, k, gated in MODEL_PRODUCTS:
            block_m, block_n, block_k, _, stages = tile_config(rows, n, k, gated, element_size, shared_memory)
            stage = (block_m + (2 if gated else 1) * block_n) * block_k * element_size
            assert stages >= 1 and block_k >= 32 and stage * stages + TILE_SCRATCH_BYTES <= shared_memory
            if shared_memory == 232448 and element_size == 2:
                wide = (256, 3) if rows <= 64 else ((64 if gated else 128), 4)
                assert (block_k, stages) == ((256, 4) if n <= 2048 else wide)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or kernels.interpreted(), reason="needs a GPU, compiled")
@pytest.mark.parametrize("rows", [16, 64, 70, 128])
def test_every_model_product_computes_in_its_tile_configuration(rows):
    """The configurations `tile_config` picks on this GPU, at the model's real widths: the frame's batches
    and the prefill's positions, one row block and two."""
    for n, k, gated in MODEL_PRODUCTS:
        x = torch.randn(rows, k, device="cuda").to(torch.bfloat16)
        weight = (torch.randn(2 * n if gated else n, k, device="cuda") / k**0.5).to(torch.bfloat16)
        norm = (1 + 0.3 * torch.randn(k, device="cuda")).to(torch.bfloat16)
        options = {"gated": True} if gated else {"residual": torch.randn(rows, n, device="cuda").to(torch.bfloat16)}
        out = fused_linear_triton(x, weight, norm_weight=norm, **options).float()
        # against the float32 function of the same bf16 values: a few roundings apart, not one (the
        # reference's own bf16 roundings fall elsewhere)
        ref = fused_linear_reference(x.float(), weight.float(), norm_weight=norm.float(),
                                     **{key: v.float() if torch.is_tensor(v) else v for key, v in options.items()})
        torch.testing.assert_close(out, ref, rtol=2**-6, atol=2**-7 * ref.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
def test_fused_linear_adds_the_residual_in_place(device):
    x = torch.randn(2, 3, 64, device=device)
    weight = torch.randn(48, 64, device=device) / 8
    stream = torch.randn(2, 3, 48, device=device)
    expected = stream + torch.nn.functional.linear(x, weight)
    out = fused_linear_triton(x, weight, residual=stream, out=stream)
    assert out is stream
    assert_same_function(stream, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_a_row_product_too_wide_for_the_launch_grid_is_refused_with_its_reason(device):
    x, weight = torch.randn(1, 16, device=device), torch.zeros(GRID_Y_MAX + 1, 16, device=device)
    with pytest.raises(InputError, match="exceed the launch grid"):
        fused_linear_triton(x, weight, config=(1, 16, 1))



@pytest.mark.parametrize("device", DEVICES)
def test_fused_sampler_never_draws_an_impossible_token_even_at_the_smallest_noise(device):
    """As the reference does (test_sampling): the fused sampler's noise is the same, bit for bit."""
    from test_sampling import extreme_draw

    logits, seeds, counters, settings, token = extreme_draw(device)
    drawn = sample_codes_triton(logits, seeds, counters, settings)
    assert (drawn != token).all()
    assert torch.equal(drawn, sample_codes_reference(logits, seeds, counters, settings))


@pytest.mark.gpu
def test_qtts_pdl_0_turns_programmatic_dependent_launch_off(monkeypatch):
    if torch.cuda.get_device_capability()[0] < 9 or kernels.gdc_wait is None:
        pytest.skip("PDL needs Hopper and a Triton with grid dependency control")
    assert kernels.pdl_supported("cuda")
    monkeypatch.setenv("QTTS_PDL", "0")
    assert not kernels.pdl_supported("cuda")


def test_batch_products_use_tiles_only_where_bf16_tensor_cores_exist(monkeypatch):
    from qtts.kernels import linear

    for capability, tiles in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(linear, "_compute_capability", lambda index, c=capability: c)
        assert linear.bf16_tensor_cores(torch.device("cuda", 0)) is tiles
    assert linear.bf16_tensor_cores(torch.device("cpu"))  # the interpreter runs them
