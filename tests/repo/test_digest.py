"""The fold digest (bench.digest) is deterministic and sees every kind of output change."""

from __future__ import annotations

from bench.data import StreamSpec
from bench.digest import Digest


def _digest(spec: StreamSpec, orders: int = 50, **rules: object) -> Digest:
    digest = Digest()
    if rules:
        digest.rules = digest.rules.model_copy(update=rules)
    digest.fold(spec, orders)
    return digest


def test_the_same_stream_gives_the_same_digest_and_every_kind_of_output() -> None:
    spec = StreamSpec(customers=40)
    first, second = _digest(spec), _digest(spec)
    assert first.hash.hexdigest() == second.hash.hexdigest()
    assert first.counts == second.counts
    kinds = set(first.counts)
    assert {"state", "figures", "transition/order", "transition/time"} <= kinds
    assert "transition/recalibration" in kinds


def test_another_stream_or_rule_version_gives_another_digest() -> None:
    spec = StreamSpec(customers=40)
    reference = _digest(spec).hash.hexdigest()
    assert _digest(StreamSpec(customers=40, seed=1)).hash.hexdigest() != reference
    assert _digest(spec, 49).hash.hexdigest() != reference  # one order less
    assert _digest(spec, version="other").hash.hexdigest() != reference  # in ids and states
