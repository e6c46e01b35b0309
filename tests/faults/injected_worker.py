"""``segmenter worker`` with failures injected into its handlers (for the fault suite only).

``python -m tests.faults.injected_worker`` runs the worker after wrapping, as
``INJECTED_FAULTS`` (JSON) asks:

- ``once``: handler names (``on_consent``, ``on_erasure``, ``save``, ``dead_letter``) that raise
  on the first attempt at each record they get (``save``: only the second save of the customers
  whose id ends in one of ``once_customers_ending``, to keep the retries few), then work;
- ``always``: ``{"on_consent": [customer ids], "on_erasure": [customer ids], "save": [order
  ids]}``: those records raise at every attempt (``save``: the save that records the order).

Each injected failure is a ``RuntimeError`` (the record's fault, not a dependency's), so the
worker retries the batch and dead-letters a record that keeps failing.
"""

from __future__ import annotations

import json
import os
from typing import Any

from streams.dlq import DeadLetters
from streams.handlers import Handlers


class Injected(RuntimeError):
    """A failure the fault suite injected."""


def _install(spec: dict[str, Any]) -> None:
    once = set(spec.get("once", ()))
    always: dict[str, list[str]] = spec.get("always", {})
    endings = tuple(spec.get("once_customers_ending", ("7",)))
    seen: set[Any] = set()

    def first_time(key: Any) -> bool:
        if key in seen:
            return False
        seen.add(key)
        return True

    def privacy(name: str) -> None:
        real = getattr(Handlers, name)

        async def handler(self: Handlers, record: Any) -> None:
            position = (name, record.topic, record.partition, record.offset)
            customer = json.loads(record.value or b"{}").get("customer_id")
            if customer in always.get(name, ()):
                raise Injected(f"{name} always fails for {customer}")
            if name in once and first_time(position):
                raise Injected(f"{name} fails once at {position}")
            await real(self, record)

        setattr(Handlers, name, handler)

    for name in ("on_consent", "on_erasure"):
        privacy(name)

    real_save = Handlers._save

    async def save(self: Handlers, partition: int, state: Any, transitions: Any, **kw: Any) -> None:
        previous = kw.get("previous")
        for order_id in always.get("save", ()):
            if order_id in state.orders and (previous is None or order_id not in previous.orders):
                raise Injected(f"saving the order {order_id} always fails")
        if (
            "save" in once
            and state.customer_id.endswith(endings)
            and state.revision == 2
            and first_time(("save", state.key, state.revision))
        ):
            raise Injected(f"saving {state.key} at revision {state.revision} fails once")
        await real_save(self, partition, state, transitions, **kw)

    Handlers._save = save  # type: ignore[method-assign]

    real_send = DeadLetters.send

    async def send(self: DeadLetters, source: Any, reason: str, message: str) -> Any:
        position = ("dead_letter", source.topic, source.partition, source.offset)
        if "dead_letter" in once and first_time(position):
            raise Injected(f"dead-lettering {position} fails once")
        return await real_send(self, source, reason, message)

    DeadLetters.send = send  # type: ignore[method-assign]


if __name__ == "__main__":
    _install(json.loads(os.environ.get("INJECTED_FAULTS", "{}")))
    from streams.cli import main

    main(["worker"])
