"""r1_ds.parallel.compression against plain references (numpy loops), on CPU."""

import numpy as np
import pytest
import torch

from r1_ds.parallel import compression as C


def _distinct(n: int, seed: int = 0) -> torch.Tensor:
    """Random values with distinct magnitudes, so that "the top k" is one set."""
    g = torch.Generator().manual_seed(seed)
    mags = torch.randperm(n, generator=g).float() + 1.0
    signs = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    return mags * signs / n


def _ref_topk(x: torch.Tensor, k: int) -> np.ndarray:
    return np.sort(np.argsort(-np.abs(x.numpy()), kind="stable")[:k])


# -- selection ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,ratio", [(1, 0.05), (10, 0.05), (1000, 0.05), (4097, 0.01), (333, 1.0)])
def test_topk_matches_reference(n, ratio):
    x = _distinct(n)
    k = C.num_selected(n, ratio)
    idx = C.topk_indices(x, k)
    assert idx.dtype == torch.int64
    np.testing.assert_array_equal(idx.numpy(), _ref_topk(x, k))


def test_num_selected():
    assert C.num_selected(1000, 0.05) == 50
    assert C.num_selected(1001, 0.05) == 51  # rounds up
    assert C.num_selected(10, 0.001) == 1  # never zero
    assert C.num_selected(10, 1.0) == 10


@pytest.mark.parametrize("n", [20_000, 200_000])
def test_threshold_is_exact_topk_of_its_count(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(1))
    sample = C.sample_positions(n, 65536)
    idx = C.threshold_indices(x, 0.05, sample)
    k = C.num_selected(n, 0.05)
    assert abs(idx.numel() - k) <= 0.1 * k, (idx.numel(), k)
    np.testing.assert_array_equal(idx.numpy(), _ref_topk(x, idx.numel()))


def test_threshold_with_full_sample_is_exact_topk():
    x = _distinct(5000)
    idx = C.threshold_indices(x, 0.05, C.sample_positions(5000, 65536))
    np.testing.assert_array_equal(idx.numpy(), _ref_topk(x, C.num_selected(5000, 0.05)))


def test_threshold_ties_fall_back_to_exact_k():
    x = torch.ones(10_000)
    x[:7] = 2.0
    idx = C.threshold_indices(x, 0.05, C.sample_positions(10_000, 2048))
    assert idx.numel() == C.num_selected(10_000, 0.05)
    assert set(range(7)) <= set(idx.tolist())


def test_threshold_skips_zeros():
    assert C.threshold_indices(torch.zeros(1000), 0.05, C.sample_positions(1000, 2048)).numel() == 0
    x = torch.zeros(1000)
    x[[3, 500]] = torch.tensor([1.0, -2.0])
    assert C.threshold_indices(x, 0.05, C.sample_positions(1000, 2048)).tolist() == [3, 500]


def test_sample_positions_are_deterministic():
    a = C.sample_positions(1_000_000, 4096)
    b = C.sample_positions(1_000_000, 4096)
    assert torch.equal(a, b) and a.numel() == 4096 and int(a.max()) < 1_000_000
    assert torch.equal(C.sample_positions(100, 4096), torch.arange(100))


def test_select_indices_rejects_unknown_method():
    with pytest.raises(ValueError, match="method='sort'"):
        C.select_indices(torch.ones(4), 0.5, method="sort")


# -- index encoding -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 4099])
def test_bitmap_roundtrip_against_reference(n):
    g = torch.Generator().manual_seed(n)
    idx = torch.randperm(n, generator=g)[: max(1, n // 5)].sort().values
    packed = C.pack_bitmap(idx, n)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    ref = np.packbits(np.isin(np.arange(n), idx.numpy()), bitorder="little")
    np.testing.assert_array_equal(packed.numpy(), ref)
    assert torch.equal(C.unpack_bitmap(packed, n), idx)


def test_bitmap_empty():
    assert C.unpack_bitmap(C.pack_bitmap(torch.empty(0, dtype=torch.long), 20), 20).numel() == 0


def test_index_format_picks_the_smaller_encoding():
    assert C.index_format(0.05) == "bitmap"  # n/8 bytes < 4 * 0.05 n bytes
    assert C.index_format(0.01) == "int32"  # 4 * 0.01 n bytes < n/8 bytes


# -- quantization -------------------------------------------------------------------------------------------------


def _ref_quantize(v: np.ndarray, chunk: int):
    p = max(1, -(-len(v) // chunk)) * chunk
    vp = np.zeros(p, np.float32)
    vp[: len(v)] = v
    q = np.zeros(p, np.int8)
    scales = np.zeros(p // chunk, np.float32)
    for c in range(p // chunk):
        part = vp[c * chunk : (c + 1) * chunk]
        amax = np.float32(np.abs(part).max())
        scales[c] = amax / np.float32(127)
        if amax > 0:
            q[c * chunk : (c + 1) * chunk] = np.clip(np.round(part * (np.float32(127) / amax)), -127, 127)
    return q, scales


@pytest.mark.parametrize("n,chunk", [(1, 4), (100, 16), (1000, 256), (513, 256)])
def test_quantize_matches_reference(n, chunk):
    v = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 3
    q, scales = C.quantize_int8(v, chunk)
    ref_q, ref_s = _ref_quantize(v.numpy(), chunk)
    np.testing.assert_array_equal(q.numpy(), ref_q)
    np.testing.assert_allclose(scales.numpy(), ref_s, rtol=1e-7)
    deq = C.dequantize_int8(q, scales, chunk)[:n]
    bound = scales.repeat_interleave(chunk)[:n] / 2 * (1 + 1e-6)
    assert torch.all((deq - v).abs() <= bound)
    # the largest value of every chunk is exact up to fp32 rounding: amax -> 127 -> 127 * amax / 127
    assert torch.allclose(deq.abs().max(), v.abs().max())


def test_quantize_zero_chunk_and_padding():
    v = torch.zeros(10)
    v[9] = -5.0
    q, scales = C.quantize_int8(v, 8)
    assert q.numel() == 16
    torch.testing.assert_close(scales, torch.tensor([0.0, 5.0 / 127]))
    assert torch.equal(C.dequantize_int8(q, scales, 8)[:10], v)


def test_sum_dequantized_matches_reference():
    g = torch.Generator().manual_seed(3)
    parts = [torch.randn(64, generator=g) for _ in range(3)]
    coded = [C.quantize_int8(p, 16) for p in parts]
    q = torch.stack([c[0] for c in coded])
    s = torch.stack([c[1] for c in coded])
    ref = sum(C.dequantize_int8(qq, ss, 16) for qq, ss in coded)
    torch.testing.assert_close(C.sum_dequantized(q, s, 16), ref, rtol=0, atol=1e-6)


# -- message and error feedback -----------------------------------------------------------------------------------


def test_compress_decompress_roundtrip():
    x = _distinct(2000)
    msg = C.compress(x, ratio=0.05, chunk=32, method="topk")
    dense = C.decompress(msg, 2000)
    np.testing.assert_array_equal(dense.nonzero().squeeze(1).numpy(), _ref_topk(x, 100))
    kept = msg.indices
    assert torch.all((dense[kept] - x[kept]).abs() <= msg.scales.repeat_interleave(32)[:100] / 2 * (1 + 1e-6))
    assert msg.nbytes(index_format="bitmap", numel=2000) == 250 + 128 + 4 * 4


@pytest.mark.parametrize("method", ["topk", "threshold"])
def test_error_feedback_conserves_the_gradient(method):
    """Over many steps, everything sent plus the final error buffer equals the sum of all gradients."""
    n, steps = 5000, 30
    g = torch.Generator().manual_seed(7)
    sample = C.sample_positions(n, 2048)
    err = None
    sent_total = torch.zeros(n, dtype=torch.float64)
    grad_total = torch.zeros(n, dtype=torch.float64)
    for _ in range(steps):
        grad = torch.randn(n, generator=g) * torch.rand(n, generator=g)
        x = C.add_error(grad, err)
        msg = C.compress(x, ratio=0.05, chunk=64, method=method, sample=sample)
        err = C.residual(x, msg.indices, msg.values())
        # per step: residual + what was sent is what there was to send
        torch.testing.assert_close(err + C.decompress(msg, n), x, rtol=0, atol=1e-6)
        sent_total += C.decompress(msg, n).double()
        grad_total += grad.double()
    torch.testing.assert_close(sent_total + err.double(), grad_total, rtol=0, atol=1e-4)
    # and the buffer stays bounded: it is carried, not piling up without limit
    assert err.abs().max() < grad_total.abs().max()


def test_add_error_copies_and_upcasts():
    grad = torch.ones(4, dtype=torch.bfloat16)
    x = C.add_error(grad, torch.full((4,), 0.5))
    assert x.dtype == torch.float32 and x.tolist() == [1.5] * 4
    y = C.add_error(x, None)
    y += 1
    assert x.tolist() == [1.5] * 4  # a copy, never the gradient itself
