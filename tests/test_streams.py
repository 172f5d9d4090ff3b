"""Rotated (domain-IL) and blurry-boundary (class-IL) streams, seeded class orders; permuted / rotated / blurry
take a data set given by name or as a mapping (an ImageFolder tree stays on disk)."""

from __future__ import annotations

import pytest
import torch

from clframe.data import load_dataset, register_dataset
from clframe.errors import ConfigError
from clframe.registry import SCENARIOS
from clframe.scenarios.streams import rotate
from clframe.stream import LazyRows, TensorData
from tests.test_data_formats import decodes, root, write_tree  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")  # rotations are many small grid samples


def test_rotate_quarter_turn_is_exact():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.allclose(rotate(x, 90), torch.rot90(x, 1, (2, 3)), atol=1e-4) or torch.allclose(
        rotate(x, 90), torch.rot90(x, -1, (2, 3)), atol=1e-4
    )
    assert torch.allclose(rotate(x, 0), x)


def test_rotated_stream_is_domain_incremental_and_seeded():
    build = lambda seed: SCENARIOS.build(  # noqa: E731
        {"name": "rotated", "dataset": "digits", "n_experiences": 3, "train_per_experience": 100}, seed=seed
    )
    a, b, c = build(0), build(0), build(1)
    assert a.setting == "domain" and [e.classes for e in a.experiences] == [list(range(10))] * 3
    assert [e.name for e in a.experiences] == [e.name for e in b.experiences] != [e.name for e in c.experiences]
    assert len(a.experiences[0].train) == 100 and torch.equal(a.experiences[1].train.x, b.experiences[1].train.x)
    fixed = SCENARIOS.build(
        {"name": "rotated", "dataset": "digits", "angles": [0, 90], "train_per_experience": None}, seed=0
    )
    e0, e1 = fixed.experiences
    assert torch.equal(e0.test.y, e1.test.y) and not torch.allclose(e0.test.x, e1.test.x)


def test_blurry_moves_the_requested_share_and_keeps_tests_disjoint():
    s = SCENARIOS.build(
        {"name": "blurry", "dataset": "digits", "blurry_percent": 10.0, "shuffle_classes": True}, seed=3
    )
    majors = [sorted(torch.unique(e.test.y).tolist()) for e in s.experiences]
    assert sorted(c for m in majors for c in m) == list(range(10))  # tests: disjoint major classes
    assert majors != [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # seeded class order
    total = sum(len(e.train) for e in s.experiences)
    foreign = sum(int((~torch.isin(e.train.y, torch.tensor(m))).sum()) for e, m in zip(s.experiences, majors))
    assert 0.06 < foreign / total < 0.14 and total == 1257  # ~10 % of the samples sit in another experience
    sharp = SCENARIOS.build({"name": "blurry", "dataset": "digits", "blurry_percent": 0.0}, seed=0)
    assert [e.classes for e in sharp.experiences] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


@register_dataset("imagefolder_in_memory")  # the reference: the same tree, every image decoded up front
def _imagefolder_in_memory(path: str) -> tuple[TensorData, TensorData]:
    parts = load_dataset({"name": "imagefolder", "path": path})
    return tuple(TensorData(d.x[:], d.y, d.ids, d.task) for d in parts)


SPEC_NODES = {
    "permuted": {"n_experiences": 2},
    "rotated": {"n_experiences": 2, "train_per_experience": 10, "cache_mb": 0},
    "blurry": {"n_experiences": 3, "blurry_percent": 30.0},
}


@pytest.mark.parametrize("name", sorted(SPEC_NODES))
def test_streams_take_a_dataset_mapping_and_keep_a_tree_on_disk(name, root, tmp_path, decodes):  # noqa: F811 (the imported fixture)
    """``dataset: {name: imagefolder, path: ...}`` as ``split`` takes it: the stream is named after the data set,
    its inputs stay lazy (building decodes probes only) and equal those of the same tree held in memory."""
    write_tree(tmp_path / "tree", per_class=(8, 3))  # 3 classes: 24 train, 9 test images
    path = str(tmp_path / "tree")
    lazy = SCENARIOS.build({"name": name, "dataset": {"name": "imagefolder", "path": path}, **SPEC_NODES[name]}, seed=0)
    assert lazy.name == f"{name}_imagefolder" and lazy.input_shape == (3, 8, 8)
    assert all(isinstance(e.train.x, LazyRows) and isinstance(e.test.x, LazyRows) for e in lazy.experiences)
    assert len(decodes) <= 3 + 2 * len(lazy.experiences) < 33  # one-image shape probes (per split / derived copy)
    eager = SCENARIOS.build({"name": name, "dataset": {"name": "imagefolder_in_memory", "path": path},
                             **SPEC_NODES[name]}, seed=0)  # fmt: skip
    assert eager.name == f"{name}_imagefolder_in_memory"
    for a, b in zip(lazy.experiences, eager.experiences, strict=True):
        assert a.classes == b.classes and a.name == b.name
        for split in ("train", "test"):
            da, db = getattr(a, split), getattr(b, split)
            assert torch.equal(da.ids, db.ids) and torch.equal(da.y, db.y) and torch.equal(da.x[:], db.x[:])
    with pytest.raises(ConfigError, match=r"scenario.dataset.size=4 is invalid; valid choices: image_size, mode, path"):
        SCENARIOS.build({"name": name, "dataset": {"name": "imagefolder", "path": path, "size": 4}}, seed=0)


@pytest.mark.parametrize("name", sorted(SPEC_NODES))
def test_a_named_dataset_as_a_mapping_is_the_same_stream(name):
    node = {**SPEC_NODES[name], "n_experiences": 5 if name == "blurry" else 2}  # digits: 10 classes
    by_name = SCENARIOS.build({"name": name, "dataset": "digits", **node}, seed=1)
    by_map = SCENARIOS.build({"name": name, "dataset": {"name": "digits"}, **node}, seed=1)
    assert by_name.name == by_map.name == f"{name}_digits"
    for a, b in zip(by_name.experiences, by_map.experiences, strict=True):
        assert torch.equal(a.train.ids, b.train.ids) and torch.equal(a.train.x[:], b.train.x[:])
