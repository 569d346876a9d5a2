import pytest
import torch

from maskedkd import SoftTarget, TopK, from_logits, kd_loss, logsumexp_at


def _logits(b=6, c=20, seed=0):
    return torch.randn(b, c, generator=torch.Generator().manual_seed(seed)) * 3


def test_from_logits_top_k_and_all():
    logits = _logits()
    t = from_logits(logits, 5)
    v, i = logits.topk(5, dim=1)
    assert not t.dense and torch.equal(t.idx, i) and torch.equal(t.logit, v) and t.tau == 1.0
    assert torch.equal(t.lse, torch.logsumexp(logits, 1))
    dense = from_logits(logits.double(), "all")
    assert dense.dense and dense.idx is None and dense.lse is None and dense.logit.dtype == torch.float32
    with pytest.raises(ValueError, match="k must be"):
        from_logits(logits, 21)
    assert set(logsumexp_at(logits, [2.0, 0.5])) == {2.0, 0.5}
    assert torch.equal(logsumexp_at(logits, [2])[2.0], torch.logsumexp(logits / 2, 1))


def test_topk_is_the_top_k_constructor():
    logits = _logits()
    v, i = logits.topk(3, dim=1)
    t = TopK(i, v, torch.logsumexp(logits, 1))
    assert isinstance(t, SoftTarget) and not t.dense and t.tau == 1.0
    with pytest.raises(ValueError, match="both idx and lse"):
        SoftTarget(v, idx=i)


@pytest.mark.parametrize("k", [4, "all"])
def test_rows_concatenation_and_device(k):
    t = from_logits(_logits(), k)
    rows = torch.tensor([4, 0, 2])
    part = t[rows]
    assert len(part) == 3 and torch.equal(part.logit, t.logit[rows])
    whole = SoftTarget.cat([t[:2], t[2:]])
    for name in ("logit", "idx", "lse"):
        a, b = getattr(whole, name), getattr(t, name)
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(t.to("cpu").logit, t.logit)
    with pytest.raises(ValueError, match="concatenate"):
        SoftTarget.cat([from_logits(_logits(), 4), from_logits(_logits(), "all")])


def test_log_probs_top_k_buckets_and_dense():
    logits = _logits()
    t = from_logits(logits, 4)
    log_p, tail = t.log_probs(1.0)
    full = torch.log_softmax(logits, 1)
    torch.testing.assert_close(log_p, full.gather(1, t.idx))
    # the tail from 1 - sum(p_k): float32 rounding of the head shows in a small tail
    torch.testing.assert_close(tail, full.scatter(1, t.idx, float("-inf")).logsumexp(1), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="tau=2"):
        t.log_probs(2.0)
    hot = TopK(t.idx, t.logit, torch.logsumexp(logits / 2, 1), 2.0)
    torch.testing.assert_close(hot.log_probs(2.0)[0], torch.log_softmax(logits / 2, 1).gather(1, t.idx))
    dense, none = from_logits(logits, "all").log_probs(2.0)
    assert none is None and torch.equal(dense, torch.log_softmax(logits / 2, 1))


def test_buckets_sum_the_tail():
    logits, log_q = _logits(), torch.log_softmax(_logits(seed=1), 1)
    t = from_logits(logits, 4)
    head, tail = t.buckets(log_q)
    assert torch.equal(head, log_q.gather(1, t.idx))
    torch.testing.assert_close(torch.logaddexp(head.logsumexp(1), tail), torch.zeros(6), atol=1e-6, rtol=0)
    assert from_logits(logits, 20).buckets(log_q)[1] is None  # K = C: no tail
    assert from_logits(logits, "all").buckets(log_q) == (log_q, None)


def test_top_class_agrees_for_both_kinds():
    logits = _logits()
    assert torch.equal(from_logits(logits, 3).top_class(), logits.argmax(1))
    assert torch.equal(from_logits(logits, "all").top_class(), logits.argmax(1))


def test_dense_target_is_the_raw_logits_loss():
    s, logits = _logits(seed=2), _logits()
    for tau in (1.0, 4.0):
        assert torch.equal(kd_loss(s, from_logits(logits, "all"), tau), kd_loss(s, logits, tau))
    assert torch.equal(kd_loss(s, from_logits(logits, 3), kind="hard"), kd_loss(s, logits, kind="hard"))
