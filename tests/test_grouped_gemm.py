"Tests for moe_course.grouped_gemm: the CPU grouped expert kernel (a custom op) against the per-expert definition."
import pytest
import torch
import torch.nn.functional as F

from moe_course.grouped_gemm import GROUP_ALIGN, _register, grouped_ffn, grouped_mm_available


def reference(x, offsets, w1, b1, w2, b2):
    "The definition: one expert at a time, rows [offsets[i-1], offsets[i]); rows past the last offset give 0."
    rows, start = [], 0
    for i, end in enumerate(offsets.tolist()):
        rows.append(F.relu(F.relu(x[start:end] @ w1[i] + b1[i]) @ w2[i] + b2[i])); start = end
    return torch.cat(rows + [x.new_zeros(len(x) - start, w2.shape[-1])])


def weights(N, d, f, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, d, f, generator=g) * 0.3, torch.randn(N, f, generator=g), torch.randn(N, f, d, generator=g) * 0.3,
            torch.randn(N, d, generator=g)]


@pytest.mark.parametrize("offsets", [[4, 4, 9], [0, 0, 12], [12, 12, 12], [3, 7, 10], [0, 0, 0]])
def test_matches_definition_outputs_and_gradients(offsets):
    "Uneven groups, empty groups (zero, not missing, gradients), rows past the end (zero output and gradient)."
    N, d, f, n = 3, 5, 7, 12
    ws = weights(N, d, f)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    o = torch.tensor(offsets, dtype=torch.int32)
    a = [t.clone().requires_grad_() for t in [x] + ws]; b = [t.clone().requires_grad_() for t in [x] + ws]
    out, ref = grouped_ffn(a[0], o, *a[1:]), reference(b[0], o, *b[1:])
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    out.backward(g); ref.backward(g)
    for p, q in zip(a, b): torch.testing.assert_close(p.grad, q.grad)
    assert torch.equal(a[0].grad[offsets[-1]:], torch.zeros(n - offsets[-1], d))


def test_gradients_with_broadcast_upstream_gradient():
    "sum() sends an expanded (stride-0) gradient; F.grouped_mm's CPU backward rejects those, ours does not."
    ws = [w.requires_grad_() for w in weights(2, 4, 8)]
    x = torch.randn(6, 4, requires_grad=True)
    grouped_ffn(x, torch.tensor([2, 6]), *ws).sum().backward()
    xr = x.detach().clone().requires_grad_()
    gx, = torch.autograd.grad(reference(xr, torch.tensor([2, 6]), *[w.detach() for w in ws]).sum(), xr)
    torch.testing.assert_close(x.grad, gx)


def test_no_input_gradient_when_not_needed():
    ws = [w.requires_grad_() for w in weights(2, 4, 8)]
    x = torch.randn(6, 4)                                           # no grad: only the weights get one
    grouped_ffn(x, torch.tensor([3, 6]), *ws).square().sum().backward()
    assert all(w.grad is not None for w in ws) and x.grad is None


def test_opcheck():
    "PyTorch's own checks of a custom operator: fake kernel shapes, registration, autograd vs finite differences."
    from moe_course.grouped_gemm import _ffn_op
    ws = [w.double().requires_grad_() for w in weights(3, 4, 6)]
    x = torch.randn(9, 4, dtype=torch.double, requires_grad=True)
    torch.library.opcheck(_ffn_op, (x, torch.tensor([3, 3, 7], dtype=torch.int32), *ws))
    assert torch.autograd.gradcheck(lambda x, *w: grouped_ffn(x, torch.tensor([3, 3, 7]), *w), (x, *ws))


def test_compiles_fullgraph():
    ws = weights(3, 4, 8)
    x = torch.randn(10, 4, requires_grad=True); o = torch.tensor([2, 5, 9])
    torch._dynamo.reset()
    f = torch.compile(lambda x, o, *w: grouped_ffn(x, o, *w).square().sum(), fullgraph=True)
    f(x, o, *ws).backward()
    xr = x.detach().clone().requires_grad_()
    reference(xr, o, *ws).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


def test_dtypes_and_availability():
    ws = weights(2, 8, 16)
    x = torch.randn(5, 8).bfloat16()
    out = grouped_ffn(x, torch.tensor([2, 5]), *ws)                # weights follow the tokens' dtype
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference(x.float(), torch.tensor([2, 5]), *[w.bfloat16().float() for w in ws]),
                               rtol=2e-2, atol=2e-2)
    assert not grouped_mm_available(x, ws[0], ws[2])              # a CPU tensor: no grouped_mm fast path
    assert GROUP_ALIGN * 2 % 16 == 0                              # 16-byte group starts in bf16


def test_register_is_idempotent():
    "Registering an existing op name (a re-run notebook cell) returns the op already there."
    op = _register("grouped_ffn", None, None)
    assert op is torch.ops.moe_course.grouped_ffn
