"""ER, DER++, ER-ACE, iCaRL: losses as in the papers / Mammoth, memory contents, NME prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clframe.backbones.simple import MLP
from clframe.data import load_dataset
from clframe.strategies.buffers import herding
from clframe.strategies.derpp import DERpp
from clframe.strategies.er import ER
from clframe.strategies.er_ace import ERACE
from clframe.strategies.icarl import ICaRL
from clframe.stream import Experience
from tests.conftest import BLOBS


def blobs_experience(i: int, classes: list[int], transform=None) -> Experience:
    train, test = load_dataset("blobs")
    pick = lambda d: d.subset(torch.isin(d.y, torch.tensor(classes)))  # noqa: E731
    return Experience(i, "learn", pick(train), pick(test), classes, transform=transform)


def make(cls, **kw):
    torch.manual_seed(0)
    return cls(MLP((1, 4, 4), hidden=(16,)), 10, batch_size=8, **kw)


def first_batch(strategy, exp):
    strategy.before_experience(exp)
    return next(iter(strategy.train_dataloader_for(exp)))


def test_er_memory_holds_unaugmented_reservoir_samples():
    shift = lambda x: x + 100.0  # noqa: E731  (an "augmentation" that is easy to detect)
    er = make(ER, buffer_size=20, minibatch_size=5)
    exp = blobs_experience(0, [0, 1], transform=shift)
    er.before_experience(exp)
    for i, batch in enumerate(er.train_dataloader_for(exp)):
        if i:
            assert len(batch["replay"]["y"]) == 5
        er.training_loss(batch)
    mem = er.memory.buffer
    assert len(mem) == 20 and mem.n_seen == len(exp.train)
    train = exp.train
    rows = torch.stack([(train.ids == i).nonzero().squeeze() for i in mem.data.ids])
    assert torch.equal(mem.data.x, train.x[rows])  # stored un-augmented, exactly as in the data set


def test_derpp_loss_is_ce_plus_alpha_mse_plus_beta_ce():
    d = make(DERpp, buffer_size=50, minibatch_size=4, alpha=0.3, beta=0.7)
    batch = first_batch(d, blobs_experience(0, [0, 1, 2, 3]))
    mem_x, mem_y = torch.randn(8, 1, 4, 4), torch.randint(0, 4, (8,))
    stored = torch.randn(8, 10)
    batch["replay"] = {"x": mem_x, "y": mem_y, "task": torch.zeros(8, dtype=torch.long), "logits": stored}
    loss = d.training_loss(batch)
    seen = d.seen
    ce = F.cross_entropy(d.logits(batch["x"])[:, seen], batch["y"])  # classes 0-3 are the seen ones, in order
    mse = F.mse_loss(d.logits(mem_x[:4]), stored[:4])  # raw logits over *all* classes, as stored
    ce_mem = F.cross_entropy(d.logits(mem_x[4:])[:, seen], mem_y[4:])
    assert torch.allclose(loss, ce + 0.3 * mse + 0.7 * ce_mem, atol=1e-5)
    stored_now = d.memory.buffer.extra["logits"]
    assert torch.allclose(stored_now, d.logits(batch["x"]).detach(), atol=1e-5)  # logits kept on arrival


def test_er_ace_incoming_loss_does_not_touch_absent_old_classes():
    for cls, untouched in [(ERACE, True), (ER, False)]:
        s = make(cls, buffer_size=10)
        first_batch(s, blobs_experience(0, [0, 1]))  # learn classes 0, 1 first
        batch = first_batch(s, blobs_experience(1, [2, 3]))
        batch.pop("replay", None)
        s.zero_grad()
        s.training_loss(batch).backward()
        old_rows = s.head.weight.grad[[0, 1]].abs().sum()
        assert (old_rows == 0) == untouched, cls.__name__  # ER pushes old logits down, ER-ACE does not
        assert s.head.weight.grad[[2, 3]].abs().sum() > 0


def test_er_ace_replays_only_after_the_first_experience():
    s = make(ERACE, buffer_size=10)
    first_batch(s, blobs_experience(0, [0, 1]))
    assert not s.replay_on
    first_batch(s, blobs_experience(1, [2, 3]))
    assert s.replay_on


def test_herding_selects_running_mean_closest_to_class_mean():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [1.0, 0.1]])
    order = herding(feats, 4)
    assert order[0] == 2  # the sample nearest the mean comes first
    assert sorted(order.tolist()) == [0, 1, 2, 3] and len(herding(feats, 2)) == 2


def test_icarl_distils_old_classes_and_predicts_nearest_mean():
    s = make(ICaRL, buffer_size=12)
    exp0 = blobs_experience(0, [0, 1])
    batch = first_batch(s, exp0)
    loss = s.training_loss(batch)
    target = F.one_hot(batch["y"], 10).float()[:, :2]
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(s.logits(batch["x"])[:, :2], target))
    s.after_experience(exp0)
    assert torch.bincount(s.exemplars.data().y).tolist() == [6, 6]
    exp1 = blobs_experience(1, [2, 3])
    batch = first_batch(s, exp1)
    old = torch.sigmoid(s.old_net(batch["x"]))
    target = F.one_hot(batch["y"], 10).float()
    target[:, :2] = old[:, :2]  # old classes: previous network's probabilities
    expected = F.binary_cross_entropy_with_logits(s.logits(batch["x"])[:, :4], target[:, :4])
    assert torch.allclose(s.training_loss(batch), expected, atol=1e-6)
    s.after_experience(exp1)
    assert torch.bincount(s.exemplars.data().y).tolist() == [3, 3, 3, 3]  # 12 // 4 per class, old ones trimmed
    s.eval()
    x = exp1.test.x
    feats = F.normalize(s.features(x), dim=1)
    means = torch.stack(
        [
            F.normalize(F.normalize(s.features(s.exemplars.data().x[s.exemplars.data().y == c]), dim=1).mean(0), dim=0)
            for c in range(4)
        ]
    )
    assert torch.equal(s(x).argmax(1), torch.cdist(feats, means).argmin(1))  # eval = nearest mean of exemplars
    s.train()
    assert s(x).shape == (len(x), 10)  # training mode: the linear head


def test_derpp_run_end_to_end_beats_naive(make_cfg):
    from clframe.runner import run

    res = run(make_cfg(*BLOBS, "strategy=derpp", "strategy.lr=0.05", "strategy.buffer_size=60"))
    assert res["status"] == "complete" and res["metrics"]["cl/avg_acc"] > 0.9  # naive: ~0.65 on this stream
