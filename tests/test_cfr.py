"""CFR (clipcal/methods/cfr.py): calibration set, hard negatives, loss terms, dedup projection, fall-backs,
determinism, K = 3 and the synthetic benchmark."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipcal.errors import MethodError
from clipcal.methods import _train as T
from clipcal.methods.base import FeatureData
from clipcal.methods.cfr import (CFR, PoolSampler, calibration_set, cfr_step_loss, contrastive_loss,
                                 cross_fit_errors, mine_hard_negatives, stratified_folds, supcon_loss)
from clipcal.synthetic import generate
from tests.fixtures_cfr import cfr_step_inputs


def _feature_data(h, y, split, a=None, n_attrs=2, e=None):
    n = len(y)
    a = np.zeros(n, dtype=np.int64) if a is None else np.asarray(a)
    emb = h / np.linalg.norm(h, axis=1, keepdims=True)
    return FeatureData(features=h, embeddings=emb, y=y, a=a, group=np.asarray(y) * n_attrs + a, split=split,
                       sample_ids=[f"s{i}" for i in range(n)], class_names=[f"c{k}" for k in range(max(y) + 1)],
                       attr_names=[f"a{j}" for j in range(n_attrs)])


# ------------------------------------------------------------------------------------------------ calibration set

def test_calibration_set_is_exactly_the_erm_errors_on_train():
    y = np.array([0, 1, 1, 0, 1, 0, 1, 0])
    pred = np.array([0, 0, 1, 1, 1, 1, 0, 0])  # wrong at rows 1, 3, 5, 6
    train = np.array([6, 0, 1, 2, 3])           # row 5 is wrong but not in train
    assert calibration_set(y, pred, train).tolist() == [1, 3, 6]
    assert calibration_set(y, y, train).tolist() == []


def test_fit_calibration_set_matches_stage1_predictions():
    data = generate(n_train=300, n_val=120, n_test=120, dim=16, seed=1).data
    m = CFR(erm_epochs=3, epochs=1, seed=0).fit(data)
    tr = data.indices("train")
    expected = tr[m.stage1_.pred[tr] != data.y[tr]]
    r = m.result_
    assert len(expected) > 0
    assert r.calibration_set.tolist() == expected.tolist()
    cs = r.record["calibration_set"]
    assert cs["size"] == len(expected)
    assert sum(v["n"] for v in cs["by_group"].values()) == len(expected)
    assert sum(cs["by_class"].values()) == len(expected)
    # make-up by group is recorded against the group's training count
    g = data.group[expected]
    assert cs["by_group"]["class0 / attr1"]["n"] == int((g == 1).sum())
    assert cs["by_group"]["class0 / attr1"]["of_train"] == int((data.group[tr] == 1).sum())


# ------------------------------------------------------------------------------------------------ hard negatives

def _brute_force_negatives(h, y, anchors, cands, n):
    hn = h / np.linalg.norm(h, axis=1, keepdims=True)
    out = []
    for a in anchors:
        c = np.array([j for j in cands if y[j] != y[a]])
        sims = hn[c] @ hn[a]
        out.append(c[np.argsort(-sims, kind="stable")[:n]].tolist())
    return out


def test_hard_negatives_are_the_nearest_other_class_samples_by_cosine():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((60, 8)).astype(np.float32) * rng.uniform(0.5, 3, (60, 1)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    anchors = np.array([0, 5, 9, 17, 33, 59])
    cands = np.arange(3, 57)
    # small chunks exercise the running top-k across anchor and candidate blocks
    got, short = mine_hard_negatives(h, y, anchors, cands, n_neg=5, chunk=7)
    assert short == 0
    assert got.shape == (6, 5)
    assert got.tolist() == _brute_force_negatives(h, y, anchors, cands, 5)
    assert all((y[got[i]] != y[a]).all() for i, a in enumerate(anchors))


def test_hard_negatives_pad_with_replacement_when_too_few_candidates():
    rng = np.random.default_rng(1)
    h = rng.standard_normal((20, 4)).astype(np.float32)
    y = np.array([0] * 17 + [1] * 3)
    got, short = mine_hard_negatives(h, y, np.array([0, 1, 18]), np.arange(20), n_neg=5, chunk=4, seed=3)
    assert short == 2                       # anchors 0 and 1 see only 3 samples of class 1
    bf = _brute_force_negatives(h, y, [0, 1], np.arange(20), 5)
    for i in range(2):
        assert got[i, :3].tolist() == bf[i]  # the real candidates first, most similar first
        assert set(got[i, 3:].tolist()) <= {17, 18, 19}
    assert got[2].tolist() == _brute_force_negatives(h, y, [18], np.arange(20), 5)[0]


def test_hard_negatives_need_another_class():
    h = np.ones((3, 2), np.float32)
    with pytest.raises(MethodError, match="no training sample of another class"):
        mine_hard_negatives(h, np.array([0, 0, 0]), np.array([0]), np.arange(3), n_neg=2)


def test_pool_sampler_draws_distinct_rows_of_the_pool_and_replaces_only_when_short():
    gen = torch.Generator().manual_seed(0)
    pools = {0: torch.arange(100, 130), 1: torch.arange(1000, 6000), 2: torch.tensor([7, 8, 9])}
    s = PoolSampler(pools, 16, gen)
    assert s.short_classes == [2]
    ay = torch.tensor([0, 1, 2, 0, 1, 1])
    out = s.sample(ay)
    assert out.shape == (6, 16)
    for i, c in enumerate(ay.tolist()):
        row = out[i].tolist()
        assert set(row) <= set(pools[c].tolist())
        if c != 2:
            assert len(set(row)) == 16      # without replacement (top-k keys and rejection branches)
        else:
            assert len(set(row)) <= 3       # with replacement from 3 rows


# ------------------------------------------------------------------------------------------------ loss terms

def test_contrastive_loss_by_hand():
    a = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])            # a·p = 1, 0
    neg = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])           # a·n = 0, -1
    # τ = 1: k=1: -log(e / (e + 1 + e^-1)); k=2: -log(1 / (1 + 1 + e^-1))
    e = math.e
    l1 = -math.log(e / (e + 1 + 1 / e))
    l2 = -math.log(1 / (2 + 1 / e))
    assert contrastive_loss(a, pos, neg, tau=1.0).item() == pytest.approx((l1 + l2) / 2, rel=1e-6)
    # τ = 0.5 doubles every similarity
    l1 = -math.log(e ** 2 / (e ** 2 + 1 + e ** -2))
    l2 = -math.log(1 / (2 + e ** -2))
    assert contrastive_loss(a, pos, neg, tau=0.5).item() == pytest.approx((l1 + l2) / 2, rel=1e-6)


def test_contrastive_loss_averages_over_anchors():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    neg = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]]])          # anchor 2's negative equals its positive
    e = math.e
    expected = (math.log(1 + 1 / e) + math.log(2)) / 2
    assert contrastive_loss(a, pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_supcon_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    # anchors 0 and 1: one positive (sim 1), denominator e^{1/t} + e^{0}; anchor 2 has no positive → excluded
    for t in (1.0, 0.5, 0.25):
        expected = math.log(math.exp(1 / t) + 1) - 1 / t
        assert supcon_loss(z, y, temperature=t).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_supcon_loss_two_positives_by_hand():
    s = 1 / math.sqrt(2)
    z = torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0]])
    y = torch.tensor([0, 0, 0])
    # anchor 0: sims to others s, 0 → -1/2[(s - L0) + (0 - L0)], L0 = log(e^s + 1); anchor 2 symmetric;
    # anchor 1: sims s, s → L1 = log(2 e^s), loss = L1 - s
    L0 = math.log(math.exp(s) + 1)
    l0 = L0 - s / 2
    l1 = math.log(2 * math.exp(s)) - s
    assert supcon_loss(z, y, temperature=1.0).item() == pytest.approx((2 * l0 + l1) / 3, rel=1e-6)


def test_supcon_loss_without_positive_pairs_is_zero_and_differentiable():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = supcon_loss(z, torch.tensor([0, 1]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("supcon", [True, False])
def test_dedup_projection_gives_the_naive_loss_and_gradients(supcon):
    h, y, W, head, (batch, anchors, pos, neg) = cfr_step_inputs()   # rows repeat within and across sets
    out = []
    for dedup in (True, False):
        model = T.LastLayer(W, head, dropout=0.1)
        model.train()
        model.generator = torch.Generator().manual_seed(7)    # same dropout masks in both runs
        loss, terms = cfr_step_loss(model, h, y, batch, anchors, pos, neg, supcon=supcon, dedup=dedup)
        loss.backward()
        out.append((loss.item(), model.weight.grad.clone(), model.head.grad.clone(), terms))
    (l1, gw1, gh1, t1), (l2, gw2, gh2, t2) = out
    assert l1 == pytest.approx(l2, rel=1e-6)
    assert torch.allclose(gw1, gw2, rtol=1e-5, atol=1e-7)
    assert torch.allclose(gh1, gh2, rtol=1e-5, atol=1e-7)
    assert set(t1) == ({"ce", "contrastive", "supcon"} if supcon else {"ce", "contrastive"})
    # the total is the documented weighted sum
    total = 1.5 * t1["ce"] + 1.5 * t1["contrastive"] + (t1["supcon"] if supcon else 0.0)
    assert l1 == pytest.approx(float(total), rel=1e-6)


# ------------------------------------------------------------------------------------------------ the estimator

def test_empty_calibration_set_falls_back_to_erm_and_says_so():
    # perfectly separable: ERM gets every training sample right
    data = generate(n_train=200, n_val=80, n_test=80, dim=8, core=5.0, spurious=0.5, noise=0.1, seed=0).data
    m = CFR(erm_epochs=2, epochs=3, calibration_errors="train").fit(data)  # the paper's rule ("auto": tests/test_cfr_never_collapses.py)
    r = m.result_
    assert r.record["fallback"] == "erm"
    assert r.record["calibration_set"]["size"] == 0
    assert len(r.calibration_set) == 0
    assert any("calibration set is empty" in n for n in r.notes)
    np.testing.assert_array_equal(r.probs, m.stage1_.probs)
    assert (r.pred == data.y).mean() == 1.0


def test_stratified_folds_spread_every_class_evenly_and_are_seeded():
    y = np.array([0] * 7 + [1] * 4 + [2] * 9)
    rows = np.arange(len(y))
    f = stratified_folds(y, rows, 3, seed=5)
    for c in range(3):
        counts = np.bincount(f[y == c], minlength=3)
        assert counts.max() - counts.min() <= 1, (c, counts)
    np.testing.assert_array_equal(f, stratified_folds(y, rows, 3, seed=5))
    assert not np.array_equal(f, stratified_folds(y, rows, 3, seed=6))


def test_cross_fit_finds_errors_where_erm_fits_every_training_sample():
    # 60 training samples in 64 dimensions: ERM separates the training split perfectly (empty calibration
    # set → fallback), while models that did not see a sample still get the minority ones wrong.
    data = generate(n_train=60, n_val=80, n_test=80, dim=64, seed=0).data
    plain = CFR(erm_epochs=30, epochs=2, calibration_errors="train").fit(data).result_
    assert plain.record["fallback"] == "erm" and plain.record["calibration_set"]["size"] == 0
    assert any("calibration_errors='cross-fit'" in n for n in plain.notes)

    m = CFR(erm_epochs=30, epochs=2, calibration_errors="cross-fit").fit(data)
    r = m.result_
    cal = r.calibration_set
    assert r.record["fallback_reason"] in (None, "selection")  # stage 2 ran (selection may still keep ERM)
    assert len(cal) > 0 and set(cal.tolist()) <= set(data.indices("train").tolist())
    summary = r.record["calibration_set"]
    assert summary["size"] == len(cal) and summary["source"].startswith("cross-fit")
    assert sum(f["n_errors"] for f in summary["folds"]) == len(cal)
    assert sum(f["n_heldout"] for f in summary["folds"]) == len(data.indices("train"))
    # the stage-2 curves exist (CFR really ran) and the progress total counted the folds
    assert (r.curves.stage == "cfr").any()


def test_cross_fit_errors_are_annotation_free_and_out_of_fold():
    data = generate(n_train=60, n_val=80, n_test=80, dim=64, seed=0).data
    kw = dict(stage="erm", epochs=30, lr=1e-2, device="cpu")
    cal, folds = cross_fit_errors(data, folds=2, seed=0, train_kwargs=kw)
    # shuffling the attribute / group labels changes nothing: no group labels are read
    rng = np.random.default_rng(1)
    shuffled = FeatureData(features=data.features, embeddings=data.embeddings, y=data.y,
                           a=rng.permutation(data.a), group=rng.permutation(data.group), split=data.split,
                           sample_ids=data.sample_ids, class_names=data.class_names, attr_names=data.attr_names,
                           proj_weight=data.proj_weight, projection=data.projection)
    cal2, _ = cross_fit_errors(shuffled, folds=2, seed=0, train_kwargs=kw)
    np.testing.assert_array_equal(cal, cal2)
    # every fold model trained on the other fold only
    n_train = len(data.indices("train"))
    assert [f["n_fit"] + f["n_heldout"] for f in folds] == [n_train, n_train]
    # mostly the minority (spurious-attribute-disagreeing) training samples
    minority = data.a[cal] != data.y[cal]
    assert minority.mean() >= 0.5, data.group[cal]


def test_cross_fit_needs_enough_samples_per_class():
    y = np.array([0] * 20 + [1] * 2 + [0, 1] * 10)
    split = np.array(["train"] * 22 + ["val"] * 10 + ["test"] * 10)
    h = np.random.default_rng(0).standard_normal((len(y), 6)).astype(np.float32)
    data = _feature_data(h, y, split)
    with pytest.raises(MethodError, match="too small: \\['c1'\\]"):
        CFR(erm_epochs=1, epochs=1, calibration_errors="cross-fit", cross_fit_folds=3).fit(data)
    with pytest.raises(MethodError, match="cross_fit_folds"):
        CFR(calibration_errors="cross-fit", cross_fit_folds=1).fit(data)
    with pytest.raises(MethodError, match="calibration_errors"):
        CFR(calibration_errors="val").fit(data)


def test_replacement_sampling_is_recorded():
    rng = np.random.default_rng(0)
    # class 1 has only 6 training samples: fewer than P = 16 positives and fewer than N = 16 negatives
    # for class-0 anchors; heavy noise makes ERM miss some of class 0.
    n0, n1 = 80, 6
    y = np.array([0] * n0 + [1] * n1 + [0, 1] * 20)
    split = np.array(["train"] * (n0 + n1) + ["val"] * 20 + ["test"] * 20)
    h = rng.standard_normal((len(y), 6)).astype(np.float32) + 0.3 * y[:, None]
    data = _feature_data(h, y, split)
    m = CFR(erm_epochs=2, epochs=1, seed=0, calibration_errors="train").fit(data)  # run stage 2 whatever the set
    rec = m.result_.record
    assert rec["fallback_reason"] in (None, "selection")  # stage 2 ran
    cal = m.result_.calibration_set
    assert (data.y[cal] == 0).any()
    text = " ".join(rec["replacement_sampling"])
    assert "positives: class 'c1'" in text
    assert "negatives:" in text and "padded with replacement" in text
    assert any("replacement sampling" in n for n in m.result_.notes)


def test_same_seed_same_result_and_other_seed_differs():
    data = generate(n_train=300, n_val=120, n_test=120, dim=16, seed=2).data
    r1 = CFR(erm_epochs=3, epochs=2, seed=5).fit(data).result_
    r2 = CFR(erm_epochs=3, epochs=2, seed=5).fit(data).result_
    r3 = CFR(erm_epochs=3, epochs=2, seed=6).fit(data).result_
    np.testing.assert_array_equal(r1.probs, r2.probs)
    np.testing.assert_array_equal(r1.embeddings_after, r2.embeddings_after)
    np.testing.assert_array_equal(r1.calibration_set, r2.calibration_set)
    np.testing.assert_array_equal(r1.curves["value"].to_numpy(), r2.curves["value"].to_numpy())
    assert not np.array_equal(r1.probs, r3.probs)


def test_three_classes_and_result_contents():
    data = generate(n_train=450, n_val=180, n_test=180, dim=24, n_classes=3, embed_dim=12, seed=0).data
    m = CFR(erm_epochs=3, epochs=2, seed=0, negatives="hard").fit(data)
    r = m.result_
    assert r.probs.shape == (data.n, 3)
    np.testing.assert_allclose(r.probs.sum(1), 1.0, rtol=1e-5)
    assert r.pred.tolist() == r.probs.argmax(1).tolist()
    assert r.embeddings_after.shape == (data.n, 12)
    np.testing.assert_allclose(np.linalg.norm(r.embeddings_after, axis=1), 1.0, rtol=1e-5)
    assert r.record["last_layer"] == "exact last layer (visual.proj)"
    assert r.record["uses_group_labels"] is False
    assert r.record["selection_rule"].startswith("worst-class")
    cfr_candidate = [c for c in r.record["selection"]["candidates"] if c["model"] == "cfr"]
    assert len(cfr_candidate) == 1 and 1 <= cfr_candidate[0]["epoch"] <= 2
    assert r.record["hparams"]["lr"] == 1e-4 and r.record["hparams"]["n_pos"] == 16
    cfr_train = r.curves[(r.curves.stage == "cfr") & (r.curves.split == "train")]
    assert set(cfr_train.metric) == {"loss", "loss_ce", "loss_contrastive", "loss_supcon"}
    assert set(r.curves.stage) == {"erm", "cfr"}
    # negatives of a 3-class anchor come from both other classes' rows
    cal = r.calibration_set
    neg, _ = mine_hard_negatives(data.features, data.y, cal, data.indices("train"), 16)
    assert all((data.y[neg[i]] != data.y[a]).all() for i, a in enumerate(cal))


def test_random_other_class_negatives_and_worst_group_selection_recorded():
    data = generate(n_train=300, n_val=120, n_test=120, dim=16, seed=3).data
    r = CFR(erm_epochs=2, epochs=1, negatives="random-other-class", selection="worst-group", init="erm",
            supcon=False).fit(data).result_
    assert r.record["uses_group_labels"] is True
    assert r.record["selection_rule"].startswith("worst-group")
    assert r.record["init"].startswith("erm")
    assert "loss_supcon" not in set(r.curves.metric)


def test_bad_options_raise_method_error():
    data = generate(n_train=100, n_val=40, n_test=40, dim=8, seed=0).data
    with pytest.raises(MethodError, match="negatives"):
        CFR(negatives="same-class").fit(data)
    with pytest.raises(MethodError, match="init"):
        CFR(init="random").fit(data)
    with pytest.raises(MethodError, match="lr"):
        CFR(lr=0).fit(data)


def test_hparams_table_matches_constructor_defaults():
    m = CFR()
    assert CFR.defaults() == m.get_params()
    assert m.get_params()["lr"] == 1e-4 and m.get_params()["epochs"] == 100


@pytest.mark.slow
def test_cfr_beats_erm_worst_group_on_synthetic():
    """95 % train correlation, seed 0: CFR's test worst-group accuracy clearly above its own stage-1 ERM's.

    lr = 1e-3, not the reference's 1e-4: without a text tower the stage-2 start is W₀ (identity) with the ERM
    head, a mismatched pair at chance level; at 1e-4 CFR needs ~10 epochs to realign and by then the
    cross-entropy on the (small) calibration set starts flipping majority groups, so the gain is not reliable
    (3 seeds, test worst-group: ERM 0.563 ± 0.036, CFR lr 1e-4 0.572 ± 0.064, CFR lr 1e-3 0.712 ± 0.099;
    bench/cfr_sweep.py). epochs = 5 instead of 100 to keep the test short: at lr 1e-3 validation worst-class
    accuracy peaks at epoch 1 and falls afterwards on every seed, so the selected model is the same.
    Selection uses validation worst-class accuracy only.
    """
    data = generate(correlation=0.95, seed=0).data
    m = CFR(lr=1e-3, epochs=5, seed=0).fit(data)
    te = data.mask("test")

    def worst_group(pred):
        c = pred[te] == data.y[te]
        return min(c[data.group[te] == g].mean() for g in range(data.n_groups))

    erm_wg, cfr_wg = worst_group(m.stage1_.pred), worst_group(m.result_.pred)
    assert m.result_.record["chosen_epoch"] == 1
    assert cfr_wg >= erm_wg + 0.05, (erm_wg, cfr_wg)
    # not bought with overall accuracy
    assert (m.result_.pred[te] == data.y[te]).mean() >= (m.stage1_.pred[te] == data.y[te]).mean()


@pytest.mark.slow
def test_cfr_at_the_reference_recipe_beats_erm_and_zero_shot_from_a_clip_like_head():
    """The paper's setting: a text tower whose zero-shot head leans on the spurious attribute (synthetic
    ``text_head="leaning"``: test worst-group ≈ 0.6), W₀ = identity (d = e), default recipe (lr 1e-4, P = N = 16 …).

    Full 100-epoch runs, 3 seeds (bench/cfr_sweep.py --text-head leaning --seeds 0 1 2): test worst-group
    ERM 0.521 ± 0.021, zero-shot 0.619 ± 0.024, CFR 0.784 ± 0.030; validation worst-class accuracy peaks by
    epoch 3–7 and falls afterwards, so 10 epochs select the same kind of model and keep the test short.
    """
    data = generate(correlation=0.95, seed=0, text_head="leaning").data
    m = CFR(epochs=10, seed=0).fit(data)
    te = data.mask("test")

    def worst_group(pred):
        c = pred[te] == data.y[te]
        return min(c[data.group[te] == g].mean() for g in range(data.n_groups))

    zero_shot = (data.embeddings @ data.text_head.T).argmax(1)
    erm_wg, zs_wg, cfr_wg = worst_group(m.stage1_.pred), worst_group(zero_shot), worst_group(m.result_.pred)
    assert m.result_.record["init"].endswith("+ text head (zero-shot)")
    assert cfr_wg >= erm_wg + 0.15, (erm_wg, cfr_wg)
    assert cfr_wg >= zs_wg + 0.1, (zs_wg, cfr_wg)
    assert (m.result_.pred[te] == data.y[te]).mean() >= (m.stage1_.pred[te] == data.y[te]).mean()
