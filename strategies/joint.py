"""Joint training: the upper bound that sees all data so far."""

from clframe.data import lazy_concat
from clframe.registry import register_strategy
from clframe.stores import DataStore
from clframe.strategy import Capabilities, Strategy
from clframe.stream import Experience, TensorLoader


@register_strategy("joint")
class Joint(Strategy):
    """At each experience, trains on the union of every experience's training data seen so far.

    After the last experience this is i.i.d. training on the whole stream (the usual
    "joint" upper bound); earlier rows of the accuracy matrix are cumulative training.
    Disk-backed data (an ImageFolder tree) is read batch by batch, never whole
    (:func:`clframe.data.lazy_concat`).
    """

    capabilities = Capabilities(language_model=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.past = self.register_store("past", DataStore())  # every earlier experience's training data

    def train_dataloader_for(self, exp: Experience) -> TensorLoader:
        data = lazy_concat([*self.past.parts, exp.train])  # disk-backed parts stay on disk: read per batch
        return TensorLoader(data, self.batch_size, shuffle=True, seed=self.seed, transform=exp.transform)

    def after_experience(self, exp: Experience) -> None:
        self.past.add(exp.train)
