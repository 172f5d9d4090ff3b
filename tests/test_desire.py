"""DESIRE: two LoRA sets, no stored inputs, refinement removes the new-class bias, resume, baselines."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

import clframe.strategies.desire as desire_module
from clframe.fit import Engine
from clframe.registry import load_plugins
from clframe.runner import build, learn_experience, run
from clframe.strategies.desire import DESIRE
from clframe.strategies.feature_stats import ClassGaussians, consolidation_kl, gaussian_kl, refine_head
from clframe.strategies.lora import lora_layers, set_coef
from clframe.stream import Experience, TensorData
from tests.conftest import BLOBS, crash_at

load_plugins()
MLP = (*BLOBS, "backbone.hidden=[64]", "strategy.consolidation_steps=3")  # LoRA on every linear of the MLP
TINY_VIT = (
    "scenario=split_blobs",
    "backbone=vit",
    "backbone.patch_size=2",
    "backbone.depth=1",
    "backbone.width=16",
    "backbone.heads=2",
    "trainer.max_epochs=3",
    "strategy.batch_size=32",
)


def _tensors(obj, seen=None):
    """Every tensor / data container reachable from ``obj`` (attributes, dicts, lists)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (torch.Tensor, TensorData, Experience)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, seen)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from _tensors(v, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("strategies", "clframe")):
        yield from _tensors(vars(obj), seen)


def test_holds_no_input_data_and_keeps_two_lora_sets(make_cfg):
    """Learn 3 experiences by hand (as the runner does); after each one, nothing the strategy holds
    (attributes, sub-objects, state dict, checkpoint state) is input data or a data container."""
    cfg = make_cfg(*TINY_VIT, "strategy=desire", "scenario.n_experiences=5", "strategy.consolidation_steps=3")
    stream, strategy = build(cfg)
    shape = tuple(stream.input_shape)
    for exp in stream.experiences:
        learn_experience(Engine.from_config(cfg), strategy, exp)
        own = {k: v for k, v in vars(strategy).items() if k not in ("_trainer",)}
        held = [*_tensors(own), *strategy.state_dict().values(), *_tensors(strategy.state_for_checkpoint())]
        assert not any(isinstance(t, (TensorData, Experience)) for t in held)
        tensors = [t for t in held if isinstance(t, torch.Tensor)]
        assert not any(t.dim() >= 2 and tuple(t.shape[-len(shape) :]) == shape for t in tensors)
        for layer in lora_layers(strategy.backbone):
            assert set(layer.lora_A) == {"old", "new"}  # only two sets, however many experiences
            assert torch.count_nonzero(layer.lora_B["new"]) == 0 and layer.coef == {"old": 1.0, "new": 0.0}
    assert len(strategy.stats) == 10 and strategy.n_merged == 5


def test_refinement_removes_new_class_bias(make_cfg):
    """CE on the new classes only biases the head towards the latest classes; retraining it on
    pseudo-features sampled from every class's Gaussian recovers old classes (digits, 5 x 2)."""
    common = (
        "scenario=split_digits",
        "backbone.hidden=[64]",
        "trainer.max_epochs=5",
        "strategy.batch_size=32",
        "strategy=desire",
        "strategy.consolidation_steps=3",
    )
    with_ref = np.asarray(run(make_cfg(*common))["accuracy_matrix"])
    without = np.asarray(run(make_cfg(*common, "strategy.refine=false"))["accuracy_matrix"])
    assert with_ref[-1].mean() > without[-1].mean() + 0.1, (with_ref, without)  # measured: 0.68 vs 0.49
    assert with_ref[-1].min() > 0.3, with_ref  # no experience is wiped out


def test_class_gaussians_sampling_drift_and_head_refinement():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    feats = torch.cat([c + 0.5 * torch.randn(200, 2, generator=gen) for c in centres])
    y = torch.arange(3).repeat_interleave(200)
    stats = ClassGaussians("full")
    stats.update(feats, y)
    assert stats.floats_per_class() == 2 + 3
    x, ys = stats.sample(500, gen)
    for c in range(3):
        assert torch.allclose(x[ys == c].mean(0), stats.means[c], atol=0.12)  # 500 samples: s.e. 0.022
        assert torch.allclose(x[ys == c].std(0), feats[y == c].std(0), atol=0.08)
    stats.shift_means(feats, feats + torch.tensor([1.0, -2.0]))  # a pure translation moves every mean by it
    assert torch.allclose(stats.means[1], feats[y == 1].mean(0) + torch.tensor([1.0, -2.0]), atol=1e-4)
    head = nn.Linear(2, 5)
    with torch.no_grad():
        head.weight.mul_(0.1)
        head.bias[:] = torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0])  # biased towards the "newest" class 2
    probe = torch.stack(list(stats.means.values()))
    assert head(probe)[:, :3].argmax(1).tolist() == [2, 2, 2]
    refine_head(head, stats, n_per_class=100, epochs=30, lr=0.05, generator=gen)
    assert head(probe)[:, :3].argmax(1).tolist() == [0, 1, 2]


def test_interrupted_run_resumes_to_identical_matrix(make_cfg, monkeypatch):
    cfg = make_cfg(*MLP, "strategy=desire", "scenario.n_experiences=5")
    crash_at(monkeypatch, DESIRE, 3, cfg)
    resumed = run(make_cfg(f"resume={cfg.run_dir}"))
    full = run(make_cfg(*MLP, "strategy=desire", "scenario.n_experiences=5"))
    assert resumed["status"] == "complete"
    np.testing.assert_allclose(resumed["accuracy_matrix"], full["accuracy_matrix"], atol=1e-6)


@pytest.mark.parametrize("name", ["lora_finetune", "lora_joint", "lora_refine"])
def test_lora_baselines_run_and_joint_remembers(make_cfg, name):
    R = np.asarray(run(make_cfg(*BLOBS, f"strategy={name}", "scenario.n_experiences=2"))["accuracy_matrix"])
    assert R.shape == (2, 2) and R[0, 0] > 0.8, R
    if name == "lora_joint":
        assert R[1].mean() > 0.8, R


def _spd(d: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen, dtype=torch.double)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.double)


def test_gaussian_kl_equals_torch_kl_divergence():
    """Full: KL of MultivariateNormal; diagonal: KL of Independent(Normal) (random SPD covariances)."""
    gen = torch.Generator().manual_seed(0)
    for d in (1, 3, 7):
        for _ in range(5):
            mu0, mu1 = (
                torch.randn(d, generator=gen, dtype=torch.double),
                torch.randn(d, generator=gen, dtype=torch.double),
            )
            s0, s1 = _spd(d, gen), _spd(d, gen)
            ref = kl_divergence(MultivariateNormal(mu0, s0), MultivariateNormal(mu1, s1))
            torch.testing.assert_close(gaussian_kl(mu0, s0, mu1, s1), ref)
            v0, v1 = s0.diagonal(), s1.diagonal()
            ref = kl_divergence(Independent(Normal(mu0, v0.sqrt()), 1), Independent(Normal(mu1, v1.sqrt()), 1))
            torch.testing.assert_close(gaussian_kl(mu0, v0, mu1, v1), ref)
            assert float(gaussian_kl(mu0, s0, mu1, s1)) > 0 and float(gaussian_kl(mu0, s0, mu0, s0)) == pytest.approx(0)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_consolidation_kl_is_zero_where_it_should_be(covariance):
    """New classes 2, 3 (current data), stored old classes 0, 1. Merged features = the new model's on all
    the data the reference was computed on and no drift: 0. On a probe subset: only the plastic term,
    = KL(sample moments of the probe (+ the reference's ridge) || reference). A pure translation ``t`` of
    the features moves every old mean by ``t`` (SDC weights sum to 1): stability term = 1/2 t^T S_c^-1 t."""
    gen = torch.Generator().manual_seed(0)
    d = 4
    old_feats = torch.cat([c + torch.randn(300, d, generator=gen) * (1 + c) for c in (-3.0, 3.0)])
    old = ClassGaussians(covariance, shrink=1e-3)
    old.update(old_feats, torch.arange(2).repeat_interleave(300))
    f_new = torch.cat([c + torch.randn(100, d, generator=gen) for c in (0.0, 6.0)])
    y = torch.tensor([2, 3]).repeat_interleave(100)
    new_ref = ClassGaussians(covariance, shrink=1e-3)
    new_ref.update(f_new, y)

    assert float(consolidation_kl(f_new, y, new_ref, f_new, old, stability=3.0)) == pytest.approx(0, abs=1e-4)
    probe = torch.randperm(len(y), generator=gen)[:60]
    fp, yp = f_new[probe], y[probe]
    expected = []
    for c in (2, 3):
        fc = fp[yp == c].double()
        cov = torch.cov(fc.T).reshape(d, d) if covariance == "full" else fc.var(0)
        mu_ref, cov_ref = (t.double() for t in new_ref.regularised(c))
        ridge = (cov_ref - new_ref.covs[c].double()).float().double()  # the same shrink * mean(diag) I
        cov0 = cov + ridge
        p = (
            MultivariateNormal(fc.mean(0), cov0)
            if covariance == "full"
            else Independent(Normal(fc.mean(0), cov0.sqrt()), 1)
        )
        q = (
            MultivariateNormal(mu_ref, cov_ref)
            if covariance == "full"
            else Independent(Normal(mu_ref, cov_ref.sqrt()), 1)
        )
        expected.append(float(kl_divergence(p, q)))
    plastic = float(consolidation_kl(fp, yp, new_ref, fp, old, stability=3.0))  # no drift: stability term 0
    assert plastic == pytest.approx(np.mean(expected), rel=1e-3) and plastic > 1e-3

    t = torch.tensor([0.3, -0.2, 0.1, 0.4])
    stab = []
    for c in (0, 1):
        cov = old.regularised(c)[1].double()
        stab.append(float(0.5 * t.double() @ (torch.linalg.solve(cov, t.double()) if cov.dim() == 2 else t / cov)))
    both = float(consolidation_kl(fp, yp, new_ref, fp - t, old, stability=3.0))
    assert both == pytest.approx(plastic + 3.0 * np.mean(stab), rel=1e-3) and both > plastic + 1e-2
    assert float(consolidation_kl(fp, yp, new_ref, fp - t, old, stability=0.0)) == pytest.approx(plastic, rel=1e-5)


@pytest.mark.parametrize("loss", ["gaussian", "features"])
def test_learned_coefficients_lower_the_objective(make_cfg, monkeypatch, loss):
    """At the second merge, the learned per-layer coefficients give a lower consolidation objective than
    the task-arithmetic start (a = b = 1) they are initialised at (fails if no step is taken)."""
    cfg = make_cfg(*MLP, "strategy=desire", "strategy.consolidation_steps=30", f"strategy.consolidation_loss={loss}")
    stream, strategy = build(cfg)
    seen = []
    original = DESIRE.learn_coefficients

    def measuring(self, layers, x, objective):
        set_coef(self.backbone, "old", 1.0)
        set_coef(self.backbone, "new", 1.0)
        with torch.no_grad():
            start = float(objective(self.features(x)))
        original(self, layers, x, objective)
        with torch.no_grad():
            seen.append((start, float(objective(self.features(x)))))
        assert any(layer.coef["old"] != 1.0 for layer in layers)

    monkeypatch.setattr(DESIRE, "learn_coefficients", measuring)
    for exp in stream.experiences[:2]:
        learn_experience(Engine.from_config(cfg), strategy, exp)
    assert len(seen) == 1
    start, end = seen[0]
    assert end < 0.9 * start, seen


def test_forget_request_drops_the_removed_classes_gaussians(make_cfg, monkeypatch):
    """learn 0-1, learn 2-3, forget class 1 (gradient ascent), learn 4-5: class 1's Gaussian is gone after
    the request and the last refinement samples classes 0, 2-5 only; metrics.json records the policy."""
    sampled = []
    original = desire_module.refine_head

    def recording(head, stats, **kw):
        sampled.append(sorted(stats.means))
        return original(head, stats, **kw)

    monkeypatch.setattr(desire_module, "refine_head", recording)
    cfg = make_cfg(
        *MLP,
        "strategy=desire",
        "strategy.refine_epochs=1",
        "scenario=unlearning_digits",
        "scenario.base.dataset=blobs",
        "scenario.base.n_experiences=3",
        "+scenario.base.classes=[0,1,2,3,4,5]",
        "scenario.requests=[{after: 1, type: class, classes: [1]}]",
        "unlearning=ga",
        "unlearning.steps=3",
        "unlearning.eval_every=0",
    )
    result = run(cfg)
    assert result["status"] == "complete" and result["removed_classes"] == [1]
    assert sampled == [[0, 1], [0, 1, 2, 3], [0, 2, 3, 4, 5]], sampled
    assert result["forget_requests"][0]["derived_state"] == DESIRE.derived_state
    on_disk = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert on_disk["forget_requests"][0]["derived_state"] == DESIRE.derived_state
