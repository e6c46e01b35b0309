"""``evolve`` copies a frozen model exactly as ``model_copy(update=...)`` does."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from models.events import Metrics
from models.frozen import evolve
from models.memo import IdentityMemo
from models.scoring import Scores
from models.state import CustomerState, OrderRecord
from tests.factories import placed
from tests.unit.core import fold

AT = datetime(2025, 3, 1, tzinfo=UTC)


def _copies(model: BaseModel, **update: object) -> tuple[BaseModel, BaseModel]:
    return evolve(model, **update), model.model_copy(update=update)


@pytest.mark.parametrize(
    ("model", "update"),
    [
        (fold([placed("c1", "o1", 0), placed("c1", "o2", 30)])[0], {"as_of": AT, "revision": 9}),
        (CustomerState(shop_id="s", customer_id="c"), {"segment": "new", "tags": ("a", "b")}),
        (OrderRecord(), {"placed_at": AT, "total": 100, "categories": {"shoes": 100}}),
        (Scores(r=1, f=2, m=3), {"f": 5}),
        (fold([placed("c2", "o1", 0)])[0], {}),
    ],
)
def test_evolve_equals_model_copy(model: BaseModel, update: dict[str, object]) -> None:
    mine, pydantics = _copies(model, **update)
    assert type(mine) is type(pydantics)
    assert mine == pydantics
    assert mine.__dict__ == pydantics.__dict__
    assert list(mine.__dict__) == list(pydantics.__dict__)  # the serialised field order
    assert mine.model_fields_set == pydantics.model_fields_set
    assert mine.model_dump_json(exclude_defaults=True) == pydantics.model_dump_json(
        exclude_defaults=True
    )
    assert mine is not model
    assert model.__dict__ != mine.__dict__ or not update  # the original is left as it was


def test_evolve_leaves_the_original_and_stays_frozen() -> None:
    state = CustomerState(shop_id="s", customer_id="c", revision=1)
    copied = evolve(state, revision=2)
    assert (state.revision, copied.revision) == (1, 2)
    with pytest.raises(Exception, match="frozen"):
        copied.revision = 3  # type: ignore[misc]


def test_evolve_of_current_figures_keeps_the_other_fields() -> None:
    metrics = Metrics(
        currency="EUR",
        order_count=2,
        total_spend=900,
        average_order_value=450,
        discount_share=0.0,
        first_order_at=AT,
        last_order_at=AT,
        recency_days=0.0,
        typical_gap_days=None,
        inactive_after_days=90.0,
    )
    scored = evolve(metrics, r_score=5, f_score=2, m_score=1)
    assert scored.model_dump() == {**metrics.model_dump(), "r_score": 5, "f_score": 2, "m_score": 1}


def test_a_full_memo_is_emptied_and_keeps_answering() -> None:
    memo: IdentityMemo[object, int] = IdentityMemo(2)
    keys = [object() for _ in range(3)]
    calls: list[object] = []

    def compute(key: object) -> int:
        calls.append(key)
        return keys.index(key)

    assert [memo.get(k, compute) for k in keys] == [0, 1, 2]
    assert memo.get(keys[2], compute) == 2  # kept after the clear
    assert memo.get(keys[0], compute) == 0  # computed again: cleared when the third came
    assert calls == [keys[0], keys[1], keys[2], keys[0]]


@pytest.mark.parametrize("cls", [CustomerState, OrderRecord, Metrics, Scores])
def test_the_models_copied_by_evolve_have_no_extra_fields_or_private_attributes(
    cls: type[BaseModel],
) -> None:
    """What ``evolve`` leaves out of the copy: a model that gains either needs model_copy."""
    assert cls.__private_attributes__ == {}
    assert cls.model_config.get("extra") != "allow"
