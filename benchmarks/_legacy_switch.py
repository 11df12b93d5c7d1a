"""A frozen copy of the course's Switch layer before stacked experts (commit e0c2228), for before/after benchmarks.

The experts are a `ModuleList` run one by one in a Python loop; `counts.tolist()` brings the load per expert to the
host once per layer (a host sync on a GPU); the random router draws on a CPU `torch.Generator` and copies the draws
to the device on every call; the capacity uses float arithmetic. Only `benchmarks/moe_dispatch.py` uses it: do not
build on it. The library's layer is `moe_course.moe.Switch`.
"""
from __future__ import annotations
import math

import torch
import torch.nn.functional as F
from torch import nn

from moe_course.moe import ResNetFeedForward
from moe_course.routing import assign_capacity, hash_tokens, load_balanced_loss, router_z_loss   # unchanged definitions


def expert_capacity(num_tokens: int, num_experts: int, capacity_factor: float) -> int:
    return max(1, math.ceil(capacity_factor * num_tokens / num_experts))


class LegacyRoute(nn.Module):
    def __init__(self, d_model, num_experts, kind="switch", seed=0):
        super().__init__()
        self.num_experts, self.kind, self.seed, self._gen = num_experts, kind, seed, None
        self.weight = nn.Parameter(torch.randn(num_experts, d_model) * d_model**-0.5) if kind == "switch" else None

    def forward(self, x, token_ids=None, mask=None):
        n, dev = x.shape[0], x.device
        if self.kind == "hash":
            return hash_tokens(token_ids.reshape(-1).to(dev), self.num_experts, self.seed), torch.ones(n, device=dev), None, None
        if self.kind == "random":
            if self.training:
                if self._gen is None: self._gen = torch.Generator().manual_seed(self.seed)
                g = self._gen
            else: g = torch.Generator().manual_seed(self.seed)
            e = torch.randint(self.num_experts, (n,), generator=g).to(dev)      # drawn on the CPU, copied over
            if mask is not None: e = e[(mask.reshape(-1).to(dev).long().cumsum(0) - 1).clamp(min=0)]
            return e, torch.ones(n, device=dev), None, None
        with torch.autocast(dev.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())
            probs = torch.softmax(logits, -1)
            gate, e = probs.max(-1)
        return e, gate, probs, logits


class LegacySwitch(nn.Module):
    "The old layer: forward(x, mask, token_ids) -> (y, dict of diagnostics)."
    def __init__(self, d_model, d_ff, num_experts, capacity_factor=1.25, router="switch", dispatch="index", dropout=0.0, seed=0):
        super().__init__()
        self.num_experts, self.capacity_factor, self.dispatch = num_experts, capacity_factor, dispatch
        self.router = LegacyRoute(d_model, num_experts, router, seed=seed)
        self.experts = nn.ModuleList(ResNetFeedForward(d_model, d_ff, dropout) for _ in range(num_experts))

    def _index(self, x, e, keep, gate, kept):
        order = torch.argsort(torch.where(keep, e, self.num_experts), stable=True)[:sum(kept)]
        out = torch.cat([ex(chunk) for ex, chunk in zip(self.experts, x[order].split(kept))])
        return out.new_zeros(x.shape).index_copy(0, order, out * gate[order, None].to(out.dtype))

    def _einsum(self, x, e, position, keep, gate, C):
        D = (F.one_hot(e, self.num_experts)[:, :, None] * F.one_hot(position.clamp(max=C-1), C)[:, None, :]
             * keep[:, None, None]).to(x.dtype)
        X = torch.einsum("tic,td->icd", D, x)
        Y = torch.stack([ex(X[i]) for i, ex in enumerate(self.experts)])
        G = D * gate[:, None, None].to(x.dtype)
        return torch.einsum("tic,icd->td", G.to(Y.dtype), Y)

    def forward(self, x, mask=None, token_ids=None):
        shape, N = x.shape, self.num_experts
        xf = x.reshape(-1, shape[-1])
        m = None if mask is None else mask.reshape(-1).to(xf.device, torch.bool)
        e, g, probs, logits = self.router(xf, None if token_ids is None else token_ids.reshape(-1), m)
        onehot = F.one_hot(e, N) if m is None else F.one_hot(e, N) * m[:, None].long()
        counts = onehot.sum(0).tolist()                                    # the host sync
        n_real = sum(counts)
        C = expert_capacity(n_real, N, self.capacity_factor)
        position, keep = assign_capacity(e, N, C, m)
        kept = [min(c, C) for c in counts]
        gate = g * keep
        y = self._index(xf, e, keep, gate, kept) if self.dispatch == "index" else self._einsum(xf, e, position, keep, gate, C)
        zero = xf.new_zeros((), dtype=torch.float32)
        aux, z = (load_balanced_loss(probs, e, m), router_z_loss(logits, m)) if probs is not None else (zero, zero)
        return y.reshape(shape), dict(aux_loss=aux, z_loss=z, tokens_per_expert=torch.tensor(counts), dropped=n_real - sum(kept))
