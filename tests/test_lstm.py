"Tests for moe_course.lstm: masking/packing, attention, parameter counts (LSTM and multi-head attention)."
import pytest
import torch
from helpers import padded_batch
from torch import nn

from moe_course.lstm import (LSTMClassifier, LSTMEncoderDecoder, LSTM_SETTINGS, lstm_param_count, make_lstm,
                             mha_param_count, run_packed)
from moe_course.transformer import MultiHeadSelfAttention

V = 60


def _batch(lengths, seed=0): return padded_batch(lengths, V, seed)


@pytest.mark.parametrize("setting", sorted(LSTM_SETTINGS))
def test_padded_batch_equals_one_by_one(setting):
    torch.manual_seed(setting)
    model = make_lstm(setting, V, d_emb=12, d_hidden=16).eval()
    lengths = [3, 9, 1, 6]
    ids, mask = _batch(lengths)
    with torch.no_grad():
        batched = model(ids, mask)
        single = torch.cat([model(ids[i:i + 1, :n], mask[i:i + 1, :n]) for i, n in enumerate(lengths)])
        # extra padding columns change nothing either
        wider = model(torch.nn.functional.pad(ids, (0, 5)), torch.nn.functional.pad(mask, (0, 5)))
    torch.testing.assert_close(batched, single)
    torch.testing.assert_close(wider, batched)


def test_additive_attention_and_two_layers_also_mask_padding():
    torch.manual_seed(0)
    model = LSTMEncoderDecoder(V, d_emb=8, d_hidden=12, n_layers=2, dropout=0.2, attention="additive").eval()
    lengths = [4, 7, 2]
    ids, mask = _batch(lengths, seed=1)
    with torch.no_grad():
        batched, a = model(ids, mask, return_attention=True)
        torch.testing.assert_close(model.last_attention, a)
        single = torch.cat([model(ids[i:i + 1, :n]) for i, n in enumerate(lengths)])   # mask from input_ids != pad
    torch.testing.assert_close(batched, single)
    torch.testing.assert_close(a.sum(-1), torch.ones(3))
    assert (a[~mask] == 0).all() and (a[mask] > 0).all()


def test_padding_tokens_do_not_influence_output():
    torch.manual_seed(0)
    model = make_lstm(4, V, d_emb=8, d_hidden=12).eval()
    ids, mask = _batch([3, 6])
    other = ids.clone(); other[0, 3:] = 7          # garbage where the mask says padding
    with torch.no_grad(): torch.testing.assert_close(model(ids, mask), model(other, mask))


def test_run_packed_final_state_is_after_last_real_token():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, batch_first=True)
    x = torch.randn(2, 6, 3)
    out, (h, c) = run_packed(lstm, x, torch.tensor([2, 6]))
    _, (h_ref, _) = lstm(x[:1, :2])
    torch.testing.assert_close(h[:, 0], h_ref[:, 0])
    assert out[0, 2:].abs().sum() == 0


def test_runs_under_bf16_autocast():
    model = make_lstm(4, V, d_emb=8, d_hidden=8)
    ids, mask = _batch([3, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask)
    assert out.shape == (2, 2) and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert model.embedding.weight.grad is not None


@pytest.mark.parametrize("d_in,h,layers", [(8, 16, 1), (32, 64, 2), (100, 7, 3)])
def test_lstm_param_count(d_in, h, layers):
    assert lstm_param_count(d_in, h, layers) == sum(p.numel() for p in nn.LSTM(d_in, h, layers).parameters())


@pytest.mark.parametrize("d,heads", [(8, 1), (16, 2), (64, 4), (96, 8), (384, 12)])
def test_mha_param_count_matches_modules(d, heads):
    n = mha_param_count(d)
    assert n == 4 * d * d + 4 * d
    assert n == sum(p.numel() for p in nn.MultiheadAttention(d, heads).parameters())
    assert n == sum(p.numel() for p in MultiHeadSelfAttention(d, heads).parameters())
    assert mha_param_count(d, bias=False) == sum(p.numel() for p in nn.MultiheadAttention(d, heads, bias=False).parameters())
    assert n - (4 * d * d + d) == 3 * d   # the reference's 4d² + d misses three bias vectors


def test_bad_inputs_have_clear_errors():
    model = LSTMClassifier(V, d_emb=4, d_hidden=4)
    with pytest.raises(ValueError, match="batch, seq_len"): model(torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="additive"): LSTMEncoderDecoder(V, attention="luong")
    with pytest.raises(ValueError, match="one of"): make_lstm(9, V)
    with pytest.raises(ValueError, match="positive int"): mha_param_count(0)


def test_all_padding_row_is_finite():
    model = make_lstm(4, V, d_emb=8, d_hidden=8).eval()
    ids = torch.zeros(2, 4, dtype=torch.long); ids[1, :2] = 9
    with torch.no_grad(): assert torch.isfinite(model(ids, ids.ne(0))).all()
