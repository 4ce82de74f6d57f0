"""A classified file's ranking and the tallies a batch of outcomes adds to the summary."""

from __future__ import annotations

from fmnist.batch.outcomes import Classified, Failed, Reason
from fmnist.batch.summary import tallies


def _classified(path: str, probabilities, label=None, unfamiliar=None) -> Classified:
    ood = None if unfamiliar is None else (5.0 if unfamiliar else 0.0)
    return Classified(path, label, tuple(probabilities), "fashion_mnist", 3, None, ood, unfamiliar)


def test_top_k_ranks_best_first_and_keeps_label_order_among_ties():
    outcome = _classified("a.png", [0.1, 0.3, 0.05, 0.3, 0.25, 0, 0, 0, 0, 0])
    assert outcome.top_k(3) == [(1, 0.3), (3, 0.3), (4, 0.25)]
    assert [class_id for class_id, _ in outcome.top_k(10)][5:] == [5, 6, 7, 8, 9]
    assert outcome.class_id == 1


def test_a_batch_tallies_classes_models_pairs_and_errors_and_counts_unfamiliar_files_apart():
    batch = [
        _classified("a.png", [0.9, 0.1] + [0] * 8, label=0, unfamiliar=False),
        _classified("b.png", [0.2, 0.8] + [0] * 8, label=0, unfamiliar=True),
        _classified("c.png", [0.6, 0.4] + [0] * 8),
        Failed("d.png", Reason.EMPTY, "0 bytes"),
        Failed("e.png", Reason.EMPTY, "0 bytes"),
    ]
    assert tallies(batch) == {
        ("class", 0): 2,
        ("unfamiliar_class", 1): 1,
        ("model", "fashion_mnist", 3): 3,
        ("pair", 0, 0): 1,
        ("unfamiliar_pair", 0, 1): 1,
        ("scored",): 2,
        ("error", Reason.EMPTY): 2,
    }
