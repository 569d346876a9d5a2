import pytest
import torch

from maskedkd import POLICIES, needs_saliency, register_policy, select_keep


def test_registry_has_the_papers_policies():
    assert {"student", "student_inverse", "random", "none"} <= set(POLICIES)
    assert needs_saliency("student") and needs_saliency("student_inverse")
    assert not needs_saliency("random") and not needs_saliency("none")


def test_student_keeps_top_scores_sorted():
    scores = torch.rand(5, 49, generator=torch.Generator().manual_seed(0))
    idx = select_keep(scores, 25, "student")
    assert idx.shape == (5, 25)
    assert bool((idx[:, 1:] > idx[:, :-1]).all())
    for b in range(5):
        kept = set(idx[b].tolist())
        threshold = scores[b].sort(descending=True).values[24]
        assert kept == {i for i in range(49) if scores[b, i] >= threshold}


def test_student_inverse_keeps_bottom_scores():
    scores = torch.rand(4, 49, generator=torch.Generator().manual_seed(1))
    idx = select_keep(scores, 10, "student_inverse")
    for b in range(4):
        assert set(idx[b].tolist()) == set(scores[b].argsort()[:10].tolist())


def test_random_reproducible_and_seed_dependent():
    s = torch.zeros(3, 49)
    a = select_keep(s, 20, "random", torch.Generator().manual_seed(5))
    b = select_keep(s, 20, "random", torch.Generator().manual_seed(5))
    c = select_keep(s, 20, "random", torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(len(set(r.tolist())) == 20 for r in a)


def test_random_per_row_generators_do_not_depend_on_batch():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = select_keep(torch.zeros(3, 49), 10, "random", gens([1, 2, 3]))
    alone = select_keep(torch.zeros(1, 49), 10, "random", gens([2]))
    assert torch.equal(batch[1], alone[0])


def test_none_keeps_everything():
    assert torch.equal(select_keep(torch.rand(2, 16), 16, "none"), torch.arange(16).expand(2, 16))


@pytest.mark.parametrize("keep", [0, -1, 50])
def test_keep_out_of_range(keep):
    with pytest.raises(ValueError, match="keep must be between 1 and 49"):
        select_keep(torch.rand(2, 49), keep)


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown masking policy 'nope'"):
        select_keep(torch.rand(2, 49), 3, "nope")


def test_a_new_policy_is_one_decorated_function():
    @register_policy("first_k_test", needs_saliency=False)
    def first_k(scores, keep, generator):
        return torch.arange(keep).expand(scores.shape[0], keep).flip(1)

    try:
        assert torch.equal(select_keep(torch.rand(2, 9), 3, "first_k_test"), torch.tensor([[0, 1, 2]] * 2))
        with pytest.raises(ValueError, match="already registered"):
            register_policy("first_k_test")(first_k)
    finally:
        POLICIES.pop("first_k_test")
