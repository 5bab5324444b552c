"""The Triton top-p sampler (r1v/generation/triton_topp.py and its split path, triton_topp_split.py) on the CPU,
through triton's interpreter.

Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, its own library functions included, so the
kernel tests need it set before triton is first imported: ``test_kernels_under_the_interpreter`` runs
them in a fresh pytest process with it set (they skip in this one unless it is set already); it skips
where triton is not installed (the CPU CI). The method knob's resolution is checked everywhere.
The interpreter runs one program per row in Python (~30 ms each), so rows are few and short here; the
full-vocabulary checks, the CUDA graph and the timing are in tests/gpu/test_triton_topp_gpu.py.
"""

from __future__ import annotations

import pytest
import torch

from r1v.generation import engine as engine_mod
from r1v.generation import sampling
from r1v.generation.sampling import Knobs, choose, resolve_top_p_method, top_p_filter
from tests.unit.interpreted import INTERPRETED, run_interpreted
from tests.unit.nucleus import assert_follows_nucleus


def test_kernels_under_the_interpreter():
    run_interpreted(__file__)


@pytest.fixture(scope="module")
def topp():
    """r1v.generation.triton_topp with interpreted kernels (only in a process started with TRITON_INTERPRET=1)."""
    if not INTERPRETED:
        pytest.skip("run by test_kernels_under_the_interpreter, in a process with TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    from r1v.generation import triton_topp

    return triton_topp


@pytest.fixture(scope="module")
def split(topp):
    """r1v.generation.triton_topp_split with interpreted kernels."""
    from r1v.generation import triton_topp_split

    return triton_topp_split


def _rows(v: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(16, v) logits of several spreads, two very peaked rows; (16,) temperatures and top-p (to 0.9999 and 1)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.3, 1.0, 3.0, 10.0]).repeat(4)[:, None]
    logits = torch.randn(16, v, generator=g) * scale  # (16, v)
    logits[5, 3] += 40.0
    logits[12, v - 1] += 12.0
    temperature = torch.tensor([0.6, 1.0, 1.5, 0.3]).repeat_interleave(4)
    top_p = torch.tensor([0.1, 0.5, 0.8, 0.9, 0.95, 0.99, 0.9999, 1.0]).repeat(2)
    return logits, temperature, top_p


def _above(scaled: torch.Tensor) -> torch.Tensor:
    """(B, V) float64 probability mass ranked strictly above each token (ties in sort order)."""
    probs = scaled.double().softmax(-1)
    ranked, order = probs.sort(-1, descending=True)
    return torch.empty_like(probs).scatter_(1, order, ranked.cumsum(-1) - ranked)


@pytest.mark.parametrize("cap", [8192, 256, 16])
def test_interp_kept_set_and_token_equal_the_sort(topp, cap):
    """cap 8192 lists every candidate at once; 256 and 16 need passes of halvings over the row first; each
    gives the sort's nucleus (but next to p) and the reference draw."""
    logits, temperature, top_p = _rows(3000)
    noise = torch.empty_like(logits).exponential_()
    tokens, thr, stats = topp._launch(logits, temperature, top_p, noise, block=512, cap=cap)
    scaled = logits / temperature[:, None]
    ref = top_p_filter(scaled, top_p)  # (16, V)
    ours = logits * (1 / temperature)[:, None] > thr[:, None]
    differ = ours != ~ref.isinf()
    near = ((_above(scaled) - top_p.double()[:, None]).abs() < 1e-6)[differ]
    assert bool(near.all()) and differ.any(-1).sum() <= 2
    assert bool(ours[top_p >= 1].all())
    expected = (ref.softmax(-1) / noise).argmax(-1)
    assert torch.equal(tokens[~differ.any(-1)], expected[~differ.any(-1)])
    assert bool(ours.gather(1, tokens[:, None]).all())
    assert bool((stats[top_p < 1, 1] == 2).all()), stats  # the register phase ran
    passes = stats[top_p < 1, 0]  # max, Z, [halvings], listing, draw
    assert bool((passes == 4).all()) if cap == 8192 else int(passes.max()) > 5, stats
    again = topp.top_p_sample(logits, temperature, top_p, noise, block=512, cap=cap)
    assert torch.equal(tokens, again)


def test_interp_ties_masked_tokens_and_one_row(topp):
    """A flat row keeps every token (mass strictly above each is 0 < p; the sort breaks the tie by position),
    and with a tiny list it is finished by halvings alone (mode 0) and the race over the row; -inf logits
    are never drawn; a row longer than the block and a single-row batch work."""
    v = 700
    logits = torch.zeros(3, v)
    logits[1, v // 2 :] = float("-inf")
    logits[2] = torch.linspace(-3, 3, v)
    temperature, top_p = torch.tensor([1.0, 0.7, 1.0]), torch.tensor([0.5, 0.9, 0.3])
    noise = torch.empty_like(logits).exponential_()
    tokens, thr, stats = topp._launch(logits, temperature, top_p, noise, block=128, cap=16)
    assert bool((logits[0] > thr[0]).all()) and int(stats[0, 1]) == 0
    assert int(tokens[0]) == int((1 / noise[0]).argmax())
    assert int(tokens[1]) < v // 2 and float(thr[1]) > float("-inf")
    ref = top_p_filter(logits[2:] / temperature[2:, None], top_p[2:])
    assert int(tokens[2]) == int((ref.softmax(-1) / noise[2:]).argmax())
    one = topp.top_p_sample(logits[2:], temperature[2:], top_p[2:], noise[2:], block=128, cap=16)
    assert one.shape == (1,) and int(one) == int(tokens[2])


def _varied(v: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(8, v) rows: broad Gaussian (a random-weights model's logits at T = 0.6), Zipf-like, peaked, a -inf tail
    (whole chunks of it), tied logits at the threshold; p from 1e-6 to 1."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, v, generator=g) * 0.78
    ranks = torch.rand(2, v, generator=g).argsort(-1).float() + 1
    logits[2:4] = -1.1 * ranks.log() + 0.3 * torch.randn(2, v, generator=g)  # Zipf-like
    logits[4, 11] += 30.0  # one token holds nearly all the mass
    logits[5, v // 3 :] = float("-inf")
    logits[6] = torch.randint(0, 4, (v,), generator=g).float()  # ~v/4 tokens tied at each value
    temperature = torch.tensor([0.6, 0.6, 1.0, 0.7, 1.0, 0.6, 1.0, 0.6])
    top_p = torch.tensor([0.9, 0.95, 0.9, 1.0, 0.5, 0.9, 0.6, 1e-6])
    return logits, temperature, top_p


@pytest.mark.parametrize(("seed", "ways", "caps"), [(0, 4, (4096, 16)), (3, 2, (16,))])  # 8 ways: the GPU test
def test_interp_split_path_equals_the_single_program_kernel(topp, split, seed, ways, caps):
    """The same noise: the same thresholds and tokens as ``split=False`` (both sides with the same loop step, so
    their masses add in the same order; only Z is summed otherwise, by chunks), in fewer sequential passes;
    2 ways are the single-program kernel's halvings (only the pre-pass saves one)."""
    logits, temperature, top_p = _varied(4096, seed)
    noise = torch.empty_like(logits).exponential_()
    for cap in caps:
        tok_old, thr_old, stats_old = topp._launch(logits, temperature, top_p, noise, block=512, cap=cap)
        tok_new, thr_new, stats_new = split._launch_split(logits, temperature, top_p, noise, block=512, cap=cap,
                                                          search_block=512, part_block=256, ways=ways)  # fmt: skip
        # a float rounding of Z may move the threshold only where the mass above a token is p·Z to ~1e-6
        scaled = logits / temperature[:, None]
        near = ((_above(scaled) - top_p.double()[:, None]).abs() < 1e-6).any(-1)
        same = thr_old == thr_new
        assert bool(near[~same].all()) and int((~same).sum()) <= 1, (thr_old, thr_new)
        assert torch.equal(tok_new[same], tok_old[same]) and torch.equal(stats_new[:, 1], stats_old[:, 1])
        kept = logits * (1 / temperature)[:, None] > thr_new[:, None]
        assert bool(kept.gather(1, tok_new[:, None]).all()) and bool(kept[top_p >= 1].all())
        assert int(kept[7].sum()) == 1 and int(tok_new[4]) == 11 and int(tok_new[5]) < 4096 // 3
        searched = stats_old[:, 0] > 4  # rows whose search made passes over the row
        assert bool((stats_new[:, 0] <= stats_old[:, 0]).all()) and bool(
            (stats_new[searched, 0] < stats_old[searched, 0]).all()
        )
        if cap == 16 and ways >= 4:  # broad rows: ~8 halvings become ~4 four-way passes (~3 eight-way)
            assert float(stats_old[:2, 0].float().mean() - stats_new[:2, 0].float().mean()) >= 4, (stats_old, stats_new)
    again = split.top_p_sample(logits, temperature, top_p, noise, block=512, cap=16)  # the defaults' other knobs
    assert torch.equal(again, split._launch_split(logits, temperature, top_p, noise, block=512, cap=16)[0])


def test_interp_split_pass_count_at_qwens_vocabulary(topp, split):
    """V = 151,936, two rows of a random-weights model's logits at T = 0.6 (the decode-step case): the single-program
    kernel makes 11 sequential passes over the row (max, Z, 7 halvings, the listing, the draw), the split path 6
    (pre-pass, 3 four-way passes, the listing of up to 8192 candidates, the draw), with the same draw."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 151_936, generator=g) * 0.78
    temperature, top_p = torch.full((2,), 0.6), torch.tensor([0.9, 0.95])
    noise = torch.empty_like(logits).exponential_()
    tok_old, thr_old, stats_old = topp._launch(logits, temperature, top_p, noise)
    tok_new, thr_new, stats_new = split._launch_split(logits, temperature, top_p, noise)
    assert stats_old[:, 0].tolist() == [11, 11] and stats_new[:, 0].tolist() == [6, 6]
    assert torch.equal(tok_new, tok_old) and torch.equal(thr_new, thr_old)


def test_interp_split_against_the_sort(topp, split):
    """The split path on the 16 rows of several spreads: the sort's nucleus (but next to p), the reference draw."""
    logits, temperature, top_p = _rows(3000, seed=3)
    noise = torch.empty_like(logits).exponential_()
    tokens, thr, _ = split._launch_split(logits, temperature, top_p, noise, block=512, cap=64, search_block=512,
                                         part_block=256, chunks=5)  # fmt: skip
    scaled = logits / temperature[:, None]
    ref = top_p_filter(scaled, top_p)
    ours = logits * (1 / temperature)[:, None] > thr[:, None]
    differ = ours != ~ref.isinf()
    near = ((_above(scaled) - top_p.double()[:, None]).abs() < 1e-6)[differ]
    assert bool(near.all()) and differ.any(-1).sum() <= 2
    expected = (ref.softmax(-1) / noise).argmax(-1)
    assert torch.equal(tokens[~differ.any(-1)], expected[~differ.any(-1)])
    default_steps = split._launch_split(logits, temperature, top_p, None, block=512, cap=64)[1]
    assert torch.equal(split.top_p_threshold(logits, temperature, top_p, block=512, cap=64), default_steps)
    assert torch.equal(split.top_p_threshold(logits, temperature, top_p, split=False, block=512, cap=64),
                       topp.top_p_threshold(logits, temperature, top_p, block=512, cap=64))  # fmt: skip


def _ptx_for_hopper(fn, ints: tuple[str, ...], pointers: dict[str, str], constexprs: dict, num_warps: int) -> str:
    """PTX of a kernel compiled for sm_90 from its source (no GPU needed): arguments are fp32 pointers unless named."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {
        a: "constexpr" if a in constexprs else "i32" if a in ints else pointers.get(a, "*fp32") for a in fn.arg_names
    }
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]


def test_split_kernels_compile_for_hopper(tmp_path):
    """The interpreter does not type-check as the compiler does (one type per name across loops and branches): the
    split path's kernels compile for sm_90 here, and ptxas fits the search's accumulators without spills."""
    if INTERPRETED:
        pytest.skip("compiled kernels: the process without the interpreter")
    pytest.importorskip("triton")
    import os
    import subprocess

    import triton

    from r1v.generation import triton_topp_split as split

    ints = ("V", "stride_l", "stride_n", "CHUNK", "NC")
    ptrs = {"idx_ptr": "*i32", "token_ptr": "*i64", "stats_ptr": "*i32"}
    sblock = split.SEARCH_ELEMS // split.WAYS
    search = {
        "NCP": 8,
        "BLOCK": split.BLOCK,
        "SBLOCK": sblock,
        "WAYS": split.WAYS,
        "CAP": split.SPLIT_CAP,
        "DRAW": True,
    }
    _ptx_for_hopper(split._chunk_stats, ints, ptrs, {"BLOCK": split.PART_BLOCK}, split.PART_WARPS)
    _ptx_for_hopper(split._race, ints, ptrs, {"NCP": 8, "BLOCK": split.PART_BLOCK}, split.PART_WARPS)
    _ptx_for_hopper(split._pick, ints, ptrs, {"NCP": 8}, 1)
    ptx = _ptx_for_hopper(split._search, ints, ptrs, search, split.NUM_WARPS)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        return
    src, out = tmp_path / "search.ptx", tmp_path / "search.cubin"
    src.write_text(ptx)
    cmd = [ptxas, "-v", "--gpu-name", "sm_90a", str(src), "-o", str(out)]
    info = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    assert "0 bytes spill stores" in info, info


def test_interp_choose_with_triton_draws_what_the_sort_draws(topp):
    """``top_p_method="triton"`` takes the race noise from torch like the sort: one seed, the same tokens."""
    logits, temperature, top_p = _rows(400, seed=1)
    top_p[top_p >= 0.99] = 0.9  # away from the sort's float32 cumsum at p → 1
    knobs = Knobs(temperature, top_p, None)
    torch.manual_seed(7)
    ours = choose(logits, knobs, greedy=False, seen=None, top_p_method="triton")
    torch.manual_seed(7)
    ref = choose(logits, knobs, greedy=False, seen=None, top_p_method="sort")
    assert ours.dtype == torch.int64 and torch.equal(ours, ref)
    penalty = Knobs(temperature, top_p, torch.full((16,), 1.3))
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen[:, :50] = True
    torch.manual_seed(8)
    ours = choose(logits, penalty, greedy=False, seen=seen, top_p_method="triton")
    torch.manual_seed(8)
    assert torch.equal(ours, choose(logits, penalty, greedy=False, seen=seen, top_p_method="sort"))


def test_interp_draws_follow_the_tempered_nucleus_distribution(topp):
    """Draws (one per row, fresh noise) within 4 sigma of softmax(logits / T) renormalised on the nucleus."""
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    n, t, p = 192, 0.7, 0.9  # the exact draw is checked against the sort's above; this is the distribution
    knobs = Knobs(torch.full((n,), t), torch.full((n,), p), None)
    draws = choose(logits.expand(n, -1).contiguous(), knobs, greedy=False, seen=None, top_p_method="triton")
    assert_follows_nucleus(draws, logits, t, p)


def test_the_method_knob(monkeypatch):
    """``auto`` is the kernel on a CUDA device where triton imports (measured in a whole rollout: 4.23 → 3.15 ms
    per step), else the sort; ``triton`` needs triton."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert resolve_top_p_method("auto", cpu) == "sort" and resolve_top_p_method("bisect", cuda) == "bisect"
    with pytest.raises(ValueError, match="top_p_method"):
        resolve_top_p_method("heap", cpu)
    for available in (False, True):
        monkeypatch.setattr(sampling, "triton_available", lambda a=available: a)
        monkeypatch.setattr(engine_mod, "triton_available", lambda a=available: a)
        assert resolve_top_p_method("auto", cuda) == ("triton" if available else "sort")
        assert resolve_top_p_method("auto", cpu) == "sort" and resolve_top_p_method("triton", cuda) == "triton"
        if available:
            assert engine_mod.StaticEngine(top_p_method="triton").top_p_method == "triton"
            assert engine_mod.StaticEngine(top_p_method="triton_split").top_p_method == "triton_split"
        else:
            with pytest.raises(ValueError, match="top_p_method 'triton_split' needs triton"):
                engine_mod.StaticEngine(top_p_method="triton_split")
    with pytest.raises(ValueError, match="top_p_method"):
        engine_mod.StaticEngine(top_p_method="heap")
