import torch
import torch.nn.functional as F

from maskedkd import TopK, distill_loss, kd_loss


def _topk(teacher, k, tau=1.0):
    v, i = teacher.topk(k, dim=1)
    return TopK(i, v, torch.logsumexp(teacher / tau, dim=1), tau)


def _full_kl(s, t, tau):
    return F.kl_div(F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1), reduction="batchmean", log_target=True) * tau**2


def test_full_logits_kl_matches_torch():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 100, generator=g), torch.randn(8, 100, generator=g) * 3
    for tau in (1.0, 4.0):
        assert torch.allclose(kd_loss(s, t, tau), _full_kl(s, t, tau), atol=1e-6)


def test_topk_with_k_equal_c_is_the_full_kl():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 50, generator=g), torch.randn(8, 50, generator=g) * 2
    for tau in (1.0, 2.0):
        assert torch.allclose(kd_loss(s, _topk(t, 50, tau), tau), _full_kl(s, t, tau), atol=1e-5)


def test_k_plus_one_bucket_never_exceeds_full_and_zero_at_equality():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        s, t = torch.randn(4, 1000, generator=g) * 2, torch.randn(4, 1000, generator=g) * 4
        for k in (1, 5, 10, 100):
            assert kd_loss(s, _topk(t, k), 1.0) <= _full_kl(s, t, 1.0) + 1e-6
    t = torch.randn(4, 1000, generator=g) * 4
    assert kd_loss(t.clone(), _topk(t, 10), 1.0).abs() < 1e-5


def test_k_plus_one_bucket_is_not_renormalised_topk():
    # Teacher and student agree on the top-K *shape* but the student puts far less mass there:
    # a renormalised top-K KL would be ~0, the exact K+1-bucket KL is not.
    t = torch.zeros(1, 100)
    t[0, :5] = 10.0
    s = torch.zeros(1, 100)
    s[0, :5] = 1.0
    assert kd_loss(s, _topk(t, 5), 1.0) > 1.0


def test_gradients_reach_the_student_only():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 20, generator=g, requires_grad=True)
    t = torch.randn(4, 20, generator=g, requires_grad=True)
    kd_loss(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    s.grad = None
    tk = _topk(t, 5)
    kd_loss(s, TopK(tk.idx, tk.logit, tk.lse), 1.0).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_hard_is_ce_against_teacher_argmax():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    want = F.cross_entropy(s, t.argmax(1))
    assert torch.allclose(kd_loss(s, t, kind="hard"), want)
    assert torch.allclose(kd_loss(s, _topk(t, 3), kind="hard"), want)


def test_topk_tau_mismatch_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="tau"):
        kd_loss(torch.randn(2, 10), _topk(torch.randn(2, 10), 3, 1.0), tau=4.0)


def test_distill_loss_combines_ce_and_kd_and_takes_soft_labels():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    y = torch.tensor([1, 2, 3, 4])
    want = F.cross_entropy(s, y) + 0.5 * kd_loss(s, t)
    assert torch.allclose(distill_loss(s, y, t, lam=0.5), want)
    soft = F.one_hot(y, 10).float()
    assert torch.allclose(distill_loss(s, soft, t, lam=0.5), want, atol=1e-6)
    assert torch.allclose(distill_loss(s, y, None), F.cross_entropy(s, y))
    # DeiT form: (1 - alpha) CE + alpha KD
    assert torch.allclose(distill_loss(s, y, t, lam=0.3, ce_weight=0.7), 0.7 * F.cross_entropy(s, y) + 0.3 * kd_loss(s, t))
