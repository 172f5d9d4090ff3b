"""RepNoise (Rosati et al. 2024, "Representation noising: a defence mechanism against harmful finetuning").

The authors' loss (``representation_noising/loss.py``, ``rep_noise_loss``, in
github.com/domenicrosati/representation-noising), in our terms (forget set = their "harmful" data,
retain set = their "harmless" data)::

    L = CE_retain + noise_weight * (1/L) sum_l MMD(z_l(x_f), N(0, I)) - ascent_weight * log(1 + H)
    H = (CE(f(x_f), y_f) + sum_l CE(r_l(h_l(x_f)), y_f)) / (L + 1)

* ``CE(f(x_f), y_f)`` is the model's own forget loss, ``-mean log p(y|x)`` from
  :meth:`Strategy.log_likelihood`; ``CE_retain`` is the base class's retain term (``retain_weight``).
* **Depth of the ascent** (the per-layer term). For an LM the authors apply the model's own read-out
  (final norm + LM head) to every hidden state, a "logit lens", and ascend the forget loss through each
  of them. A CNN / MLP layer has another width than the head's input, so the head cannot read it. Our
  read-out ``r_l`` has the head's form at that layer: pool the activation the way the backbone pools
  before its head (spatial mean for (N, C, H, W), token mean for (N, T, D)), then a linear map to the
  classes, fitted before the loop (multinomial logistic regression on standardised features of the
  frozen pre-unlearning model, forget + retain samples) and frozen: a "tuned lens" in place of the
  logit lens. Gradients of ``CE(r_l(h_l))`` reach layer ``l`` and every layer below it directly, not
  only through the output. ``readout_refit_every`` refits the read-outs on the current model during
  the loop (0: never).
* **Noise term**: ``z_l`` is the input of each captured activation module (the output of the layer's
  linear map / norm, as the authors' ``model.layers.{i}.mlp`` output is the MLP's linear output),
  flattened per sample and compared with fresh ``torch.randn_like`` noise every step by
  :func:`repnoise_mmd` (the authors' kernel: 5 Gaussians at 1/4..4 x the mean pairwise squared
  distance). ``h_l`` (read-out site) is the activation module's output, what the next layer reads.
* The log damping ``log(1 + H)`` bounds the ascent, as in the authors' code.

Layers: the backbone's activation modules (``activation_layers``) unless ``layers`` names others.
A strategy that runs the backbone once per task group (CLR, HyperInterval) is forwarded once per group,
so every captured row belongs to a known sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clframe.errors import ConfigError
from clframe.introspect import activation_layers, capture_io
from clframe.registry import register_unlearner
from clframe.unlearning.methods import Unlearner
from clframe.unlearning.pieces import repnoise_mmd


def pool_per_sample(t: Tensor) -> Tensor:
    """(N, C, H, W) -> spatial mean (N, C); (N, T, D) -> token mean (N, D); (N, D) unchanged."""
    if t.dim() == 2:
        return t
    if t.dim() == 3:
        return t.mean(1)
    return t.flatten(2).mean(2)


class Readout:
    """A frozen linear read-out ``W · (h - mu) / sd + b`` from a layer's pooled activation to the classes."""

    def __init__(self, weight: Tensor, bias: Tensor, mu: Tensor, sd: Tensor):
        self.weight, self.bias, self.mu, self.sd = weight, bias, mu, sd

    def __call__(self, h: Tensor) -> Tensor:
        return F.linear((h - self.mu) / self.sd, self.weight, self.bias)


def fit_readout(
    h: Tensor, y: Tensor, n_classes: int, *, l2: float = 1e-3, steps: int = 100, init: Readout | None = None
) -> Readout:
    """Multinomial logistic regression (L-BFGS, L2 ``l2`` on the weight) on standardised features ``h``;
    ``init``: warm start from an earlier read-out's weights (a refit during the loop)."""
    h, y = h.detach().float(), y.detach()
    mu, sd = h.mean(0), h.std(0, unbiased=False).clamp_min(1e-6)
    z = (h - mu) / sd
    w0 = init.weight.clone() if init is not None else torch.zeros(n_classes, z.shape[1], device=z.device)
    b0 = init.bias.clone() if init is not None else torch.zeros(n_classes, device=z.device)
    w, b = w0.requires_grad_(True), b0.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(F.linear(z, w, b), y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Readout(w.detach(), b.detach(), mu, sd)


@register_unlearner("repnoise")
class RepNoise(Unlearner):
    """Retain CE + MMD(pre-activations, N(0, I)) at every layer − log-damped ascent through every layer.

    Args: ascent_weight (the authors' ``alpha``, 1), noise_weight (the authors' ``beta``, 0.001),
    layers (backbone module names; None: its activation modules), per_layer (False: ascend the output
    loss only — the ablation without depth), readout_samples (forget and retain samples each, at most,
    to fit the read-outs), readout_l2, readout_steps (L-BFGS iterations), readout_refit_every (refit
    the read-outs on the current model every so many steps; 0: fit once), kernel_mul / kernel_num
    (:func:`repnoise_mmd`); the rest as :class:`Unlearner`.
    """

    def __init__(
        self,
        *,
        ascent_weight: float = 1.0,
        noise_weight: float = 0.001,
        layers: list[str] | None = None,
        per_layer: bool = True,
        readout_samples: int = 512,
        readout_l2: float = 1e-3,
        readout_steps: int = 20,
        readout_refit_every: int = 5,
        kernel_mul: float = 2.0,
        kernel_num: int = 5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if readout_samples <= 0 or readout_steps <= 0 or readout_refit_every < 0 or kernel_num <= 0:
            raise ConfigError(
                "unlearning",
                {"readout_samples": readout_samples, "readout_steps": readout_steps, "kernel_num": kernel_num},
                "readout_samples > 0, readout_steps > 0, readout_refit_every >= 0, kernel_num > 0",
            )
        self.ascent_weight, self.noise_weight, self.layers, self.per_layer = (
            ascent_weight,
            noise_weight,
            layers,
            per_layer,
        )
        self.readout_samples, self.readout_l2, self.readout_steps = readout_samples, readout_l2, readout_steps
        self.readout_refit_every, self.kernel_mul, self.kernel_num = readout_refit_every, kernel_mul, kernel_num
        self.names: list[str] = []
        self.readouts: dict[str, Readout] | None = None
        self._fit_data: dict[str, Tensor] | None = None
        self._step = 0

    # ------------------------------------------------------------ forward with captured layers
    def forward_layers(self, strategy, batch: dict[str, Tensor]):
        """``(log p(y|x), batch, {layer: (pre-activation, post-activation)})`` with rows aligned to the
        returned batch. One forward; if a layer fired more than once (the strategy routes task groups
        separately), the batch is sorted by task and forwarded once per group."""
        n = len(batch["y"])
        with capture_io(strategy.backbone, self.names) as calls:
            logp = strategy.log_likelihood(batch)
        if all(len(c) <= 1 and all(len(o) == n for _, o in c) for c in calls.values()):
            return logp, batch, {k: c[0] for k, c in calls.items() if c}
        order = torch.argsort(batch["task"], stable=True)
        batch = {k: v[order] for k, v in batch.items()}
        logps, acts = [], {k: [] for k in self.names}
        for t in batch["task"].unique().tolist():
            rows = batch["task"] == t
            part = {k: v[rows] for k, v in batch.items()}
            with capture_io(strategy.backbone, self.names) as calls:
                logps.append(strategy.log_likelihood(part))
            for k, c in calls.items():
                if c and len(c[-1][1]) == int(rows.sum()):
                    acts[k].append(c[-1])
        groups = len(logps)
        out = {
            k: (torch.cat([p for p, _ in a]), torch.cat([o for _, o in a])) for k, a in acts.items() if len(a) == groups
        }
        return torch.cat(logps), batch, out

    # ------------------------------------------------------------ read-outs
    def _sample_fit_data(self, strategy, exp) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(strategy.seed + 2)
        parts = [d for d in (exp.forget, exp.retain) if d is not None and len(d)]
        idx = [torch.randperm(len(d), generator=gen)[: self.readout_samples] for d in parts]
        dev = strategy.device
        return {
            k: torch.cat([getattr(d, k)[i] for d, i in zip(parts, idx, strict=True)]).to(dev)
            for k in ("x", "y", "task")
        }

    @torch.no_grad()
    def fit_readouts(self, model, data: dict[str, Tensor], n_classes: int) -> dict[str, Readout]:
        """Fit one read-out per captured layer on ``model``'s post-activations of ``data``."""
        _, data, acts = self.forward_layers(model, data)
        old = self.readouts or {}
        return {
            k: fit_readout(
                pool_per_sample(post),
                data["y"],
                n_classes,
                l2=self.readout_l2,
                steps=self.readout_steps,
                init=old.get(k),
            )
            for k, (_, post) in acts.items()
        }

    def setup(self, strategy, exp):
        self.names = list(self.layers) if self.layers else activation_layers(strategy.backbone)
        self._step, self.readouts, self._fit_data = 0, {}, None
        if self.per_layer and self.names:
            self._fit_data = self._sample_fit_data(strategy, exp)
            self.readouts = self.fit_readouts(self.ref, self._fit_data, strategy.n_classes)

    def __call__(self, strategy, exp):
        try:
            super().__call__(strategy, exp)
        finally:  # the read-outs and their fit data are derived from the forget set: drop them
            self.readouts, self._fit_data = None, None

    # ------------------------------------------------------------ the loss
    def terms(self, strategy, forget, retain) -> dict[str, Tensor]:
        """Every term of the loss for one (forget, retain) batch pair, and their weighted sum ``loss``."""
        logp, forget, acts = self.forward_layers(strategy, forget)
        zero = logp.new_zeros(())
        layer_ce = [
            F.cross_entropy(self.readouts[k](pool_per_sample(post)), forget["y"])
            for k, (_, post) in acts.items()
            if self.per_layer and self.readouts and k in self.readouts
        ]
        harmful = (-logp.mean() + sum(layer_ce, zero)) / (1 + len(layer_ce))
        mmds = [
            repnoise_mmd(pre.flatten(1), torch.randn_like(pre.flatten(1)), self.kernel_mul, self.kernel_num)
            for pre, _ in acts.values()
        ]
        noise = sum(mmds, zero) / max(1, len(mmds))
        retain_term = self.retain_loss(strategy, retain)
        retain_term = retain_term if torch.is_tensor(retain_term) else zero + retain_term
        ascent = -torch.log1p(harmful)
        loss = retain_term + self.noise_weight * noise + self.ascent_weight * ascent
        return {"loss": loss, "retain": retain_term, "noise": noise, "harmful": harmful, "layer_ce": layer_ce}

    def loss(self, strategy, forget, retain):
        self._step += 1
        every = self.readout_refit_every
        if every and self._fit_data is not None and self._step > 1 and (self._step - 1) % every == 0:
            was = strategy.training
            strategy.eval()  # fit on running statistics, without updating them
            self.readouts = self.fit_readouts(strategy, self._fit_data, strategy.n_classes)
            strategy.train(was)
        return self.terms(strategy, forget, retain)["loss"]
