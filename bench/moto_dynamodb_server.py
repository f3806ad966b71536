"""moto_server with TransactWriteItems copying each table once per request, not once per item.

    python -m bench.moto_dynamodb_server -H 127.0.0.1 -p PORT

moto 5.2.5 deep-copies the whole table for every item of a transaction (its rollback copy), so
filling a table with 100-item transactions is quadratic: 3,500 demo records took 300 s, and a
transaction outlasting the client's read timeout was retried while moto still ran it, the two
copies raced over the table and moto answered HTTP 500 ("dictionary changed size during
iteration"). Here the copies of one request are one copy (they are identical: moto takes them
all before applying any item) and transactions run one at a time, as their isolation wants.
The benchmark and tests/test_push_faults.py use this; the contract tests run stock moto.
"""

from __future__ import annotations

import copy
import threading
from types import SimpleNamespace
from typing import Any

from moto.dynamodb import models
from moto.dynamodb.models import DynamoDBBackend, Table
from moto.server import main

_transact = DynamoDBBackend.transact_write_items
_one_at_a_time = threading.Lock()
_copies: dict[int, Table] = {}
"""The rollback copies of the running transaction, by table identity."""


def _deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    if not isinstance(value, Table):
        return copy.deepcopy(value, memo)
    if id(value) not in _copies:
        _copies[id(value)] = copy.deepcopy(value, memo)
    return _copies[id(value)]


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    with _one_at_a_time:
        try:
            _transact(self, transact_items)
        finally:
            _copies.clear()


models.copy = SimpleNamespace(deepcopy=_deepcopy)
DynamoDBBackend.transact_write_items = transact_write_items

if __name__ == "__main__":
    main()
