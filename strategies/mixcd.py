"""mix-cd: rehearsal under a fixed compute budget that prioritises collateral-damage samples.

Bai, Yeh, Hsieh, Taly, "An Efficient Rehearsal Scheme for Catastrophic Forgetting Mitigation during
Multi-stage Fine-tuning" (NAACL Findings 2025, arXiv 2402.08096). A *collateral-damage* (CD) sample is one
the prior model (the model before the current fine-tuning stage) got right and the model being tuned now
gets wrong. The memory is partitioned into groups by the prior model's loss; each step rehearses as many
memory samples as uniform replay does, drawn with group probability proportional to ``n_k * alpha_k`` (the
estimated number of CD samples in group k), and ``alpha_k`` is estimated from the predictions the training
forward pass already made on the samples rehearsed so far: no forward pass beyond uniform replay's.

What this code does, step by step:

- memory: :class:`~clframe.strategies.buffers.ReplayBuffer` (``buffer_size``, ``buffer_policy``; the same
  samples as ``replay`` at the same settings and seed), filled after each stage. Every sample carries its last
  observed correctness and per-unit loss (from its last training forward pass: in the stage's final epoch for
  new samples, its last rehearsal for older ones), and, for the stage, ``prior_right`` and its ``group``.
  "Right" is :meth:`Strategy.correct <clframe.strategy.Strategy.correct>`'s definition (argmax = label; a
  language model: every answer token greedy-right under teacher forcing), taken from the training logits.
- groups: at the start of each stage the last observations become the prior model's; samples it got right
  are split into ``n_bins`` quantile bins of their loss, samples it got wrong form one more group (they can
  never be CD, so that group's rate is 0); ``by_class``: these groups per class (the label as the paper's
  "auxiliary information": CD concentrates in some classes, e.g. the old ones of a class-incremental
  stream, or some authors; without it, only the prior loss can separate CD from the rest).
- rates: after every step, per group, decayed counts ``cd_k <- decay * cd_k + #CD rehearsed``,
  ``seen_k <- decay * seen_k + #rehearsed``; ``alpha_k = cd_k / seen_k`` (0 while unseen).
- sampling: per-sample weight ``(1 - uniform_mix) * alpha_g / sum_k n_k alpha_k + uniform_mix / N`` (uniform
  while no CD was seen), ``replay_batch_size`` samples without replacement.

Where it follows the paper: the CD definition, partitions by the prior model's loss, group sampling
proportional to the estimated CD count, rates estimated from previously rehearsed samples only, the budget of
uniform rehearsal. Where it departs (the authors' code and the method section were not available here; the
abstract and the paper's summary were): the paper takes the prior model's losses on prior data as given — here
they are the losses logged by the training passes (train mode, slightly before the stage ended; for old memory
samples not rehearsed in the last stage, an older model's), so no extra pass is made; rates are updated every
step with exponential decay instead of once per iteration from the previous iteration's samples; the
``uniform_mix`` floor (so every group keeps being observed), the bin count and the decay are this code's
choices; of the paper's partitions by auxiliary information (task, language, ...) only the class is offered.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clframe.distributed import gather
from clframe.errors import ConfigError
from clframe.registry import register_strategy
from clframe.strategies.buffers import ReplayBuffer, ReplayLoader, replay_batch
from clframe.strategy import Capabilities, Strategy


def scores(strategy: Strategy, x: Tensor, y: Tensor, task: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample log-likelihood, number of predicted units and correctness from one forward pass."""
    if strategy.language_model:
        logp, right = strategy.backbone.answer_scores(x)
        return logp.sum(1), strategy.backbone.answer_length(x), right
    logits = strategy(x, task)
    ll = logits.log_softmax(1).gather(1, y[:, None]).squeeze(1)
    return ll, torch.ones_like(ll), logits.argmax(1) == y


class CollateralDamageMemory(ReplayBuffer):
    """A replay buffer sampled by the estimated collateral-damage density of its loss groups (see module)."""

    def __init__(
        self, capacity: int, policy: str, n_bins: int, uniform_mix: float, decay: float, by_class: bool = False
    ):
        super().__init__(capacity, policy)
        if not (isinstance(n_bins, int) and n_bins >= 1):
            raise ConfigError("strategy.n_bins", n_bins, "a positive integer")
        if not 0 < uniform_mix <= 1:
            raise ConfigError("strategy.uniform_mix", uniform_mix, "a number in (0, 1]")
        if not 0 <= decay <= 1:
            raise ConfigError("strategy.decay", decay, "a number in [0, 1]")
        self.n_bins, self.uniform_mix, self.decay, self.by_class = n_bins, uniform_mix, decay, by_class
        self.cd, self.seen = torch.zeros(n_bins + 1), torch.zeros(n_bins + 1)

    def add_observed(self, data, generator: torch.Generator, right: Tensor, loss: Tensor) -> None:
        """Offer ``data`` (with its last observed correctness / loss), then start the next stage: the last
        observations become the prior model's, and the groups and their rates are set afresh."""
        self.add(data, generator, {"right": right, "loss": loss, "prior_right": right, "group": right.long()})
        right, loss = self.extra["right"], self.extra["loss"]
        group = torch.full((len(self),), self.n_bins, dtype=torch.long)  # prior-wrong: never collateral damage
        if right.any():
            edges = torch.quantile(loss[right], torch.linspace(0, 1, self.n_bins + 1)[1:-1])
            group[right] = torch.bucketize(loss[right], edges)
        if self.by_class:  # auxiliary information: one set of loss groups per class
            group += (self.n_bins + 1) * self.data.y
        self.extra["group"], self.extra["prior_right"] = group, right.clone()
        n_groups = (self.n_bins + 1) * (int(self.data.y.max()) + 1 if self.by_class and len(self) else 1)
        self.cd, self.seen = torch.zeros(n_groups), torch.zeros(n_groups)

    def rates(self) -> Tensor:
        """``alpha_k``: the estimated fraction of collateral-damage samples in each group."""
        return torch.where(self.seen > 0, self.cd / self.seen.clamp_min(1e-12), 0.0)

    def weights(self) -> Tensor:
        alpha = self.rates()[self.extra["group"]]
        n = len(self)
        cd = alpha / alpha.sum() if alpha.sum() > 0 else torch.full((n,), 1.0 / n)
        return (1 - self.uniform_mix) * cd + self.uniform_mix / n

    def sample(self, n: int, generator: torch.Generator):
        idx = torch.multinomial(self.weights(), min(n, len(self)), replacement=False, generator=generator)
        return self.data.subset(idx), {**{k: v[idx] for k, v in self.extra.items()}, "slot": idx}

    def observe(self, slot: Tensor, right: Tensor, loss: Tensor) -> None:
        """The training pass's verdict on rehearsed samples: their last observation and the groups' CD counts."""
        slot, right = slot.cpu(), right.cpu()
        group, k = self.extra["group"][slot], len(self.cd)
        cd = (self.extra["prior_right"][slot] & ~right).float()
        self.cd = self.decay * self.cd + torch.bincount(group, weights=cd, minlength=k).float()
        self.seen = self.decay * self.seen + torch.bincount(group, minlength=k).float()
        self.extra["right"][slot], self.extra["loss"][slot] = right, loss.detach().float().cpu()

    def forget(self, ids: Tensor) -> int:
        """Drop the samples with their statistics; the group rates restart (they counted the forgotten ones)."""
        self.cd.zero_(), self.seen.zero_()
        return super().forget(ids)

    def state(self) -> dict:
        return {**super().state(), "cd": self.cd.clone(), "seen": self.seen.clone()}

    def load(self, state: dict) -> None:
        super().load(state)
        self.cd, self.seen = state["cd"].clone(), state["seen"].clone()


@register_strategy("mixcd")
class MixCD(Strategy):
    """Replay at uniform replay's budget, prioritising samples the prior model got right and the model forgets."""

    capabilities = Capabilities(language_model=True)
    derived_state = {"group rates": "refreshed: reset by a forget request (they counted the forgotten samples)"}

    def __init__(
        self,
        *args,
        buffer_size: int = 200,
        buffer_policy: str = "class_balanced",
        replay_batch_size: int | None = None,
        n_bins: int = 5,
        by_class: bool = False,
        uniform_mix: float = 0.2,
        decay: float = 0.9,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        memory = CollateralDamageMemory(buffer_size, buffer_policy, n_bins, uniform_mix, decay, by_class)
        self.buffer = self.register_store("buffer", memory)
        self.replay_batch_size = replay_batch("replay_batch_size", replay_batch_size, self.batch_size)
        self.rehearsed = 0  # memory samples trained on so far (the compute budget, equal to replay's)
        self._last: tuple | None = None  # this stage: sorted ids, their rows, last right / loss per row

    def before_experience(self, exp):
        super().before_experience(exp)
        n = 0 if exp.train is None else len(exp.train)
        ids, order = exp.train.ids.sort() if n else (None, None)
        self._last = ids, order, torch.zeros(n, dtype=torch.bool), torch.full((n,), float("inf"))

    def train_dataloader_for(self, exp):
        return ReplayLoader(super().train_dataloader_for(exp), self.buffer, self.replay_batch_size, self.seed)

    def training_loss(self, batch):
        mem = batch.get("replay")
        parts = [batch] if mem is None else [batch, mem]
        ll, units, right = scores(self, *(torch.cat([p[k] for p in parts]) for k in ("x", "y", "task")))
        loss = (-ll / units).detach()
        n = len(batch["y"])  # several processes: the statistics of the whole global batch, on every rank
        if self._last is not None and "ids" in batch:
            ids, order, last_right, last_loss = self._last
            row = order[torch.searchsorted(ids, gather(batch["ids"]).cpu())]  # the samples' rows in exp.train
            last_right[row], last_loss[row] = gather(right[:n]).cpu(), gather(loss[:n]).float().cpu()
        if mem is not None and "slot" in mem:
            slot = gather(mem["slot"])
            self.buffer.observe(slot, gather(right[n:]), gather(loss[n:]))
            self.rehearsed += len(slot)
        return -ll.sum() / units.sum().clamp_min(1)  # cross-entropy, or a language model's token-mean NLL

    def after_experience(self, exp):
        _, _, right, loss = self._last
        self.buffer.add_observed(exp.train, torch.Generator().manual_seed(self.seed), right, loss)
        self._last = None

    def state_for_checkpoint(self):
        return {"rehearsed": self.rehearsed}

    def load_checkpoint_state(self, state):
        self.rehearsed = int(state.get("rehearsed", 0))
