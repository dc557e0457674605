"""wire/message.py drives its Connection through Connection's public surface only (no private member of another
object), so the connection's internals can change without a Message reaching into them."""
from __future__ import annotations

import ast
from pathlib import Path

import wire.message
from wire.conn import Connection


def _foreign_private_uses(source: str) -> list[str]:
    """``obj._name`` where ``obj`` is anything but plain ``self`` (dunders allowed), as ``line: text``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if isinstance(node.value, ast.Name) and node.value.id == "self":
            continue
        found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _source() -> str:
    return Path(wire.message.__file__).read_text()


def test_message_module_uses_no_private_member_of_another_object() -> None:
    assert _foreign_private_uses(_source()) == []


def test_the_check_catches_a_private_connection_call() -> None:
    bad = "def f(self, conn):\n    conn._check_open()\n    self._conn._attach(1)\n    self._own()\n"
    assert _foreign_private_uses(bad) == ["2: conn._check_open", "3: self._conn._attach"]


def test_every_connection_member_message_uses_exists_and_is_public() -> None:
    """The names called on the connection (``conn.x`` / ``self._conn.x``) are public members of Connection."""
    used = set()
    for node in ast.walk(ast.parse(_source())):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "conn") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "_conn"):
                used.add(node.attr)
    assert used, "wire/message.py no longer talks to its connection? update this test"
    assert all(not name.startswith("_") and hasattr(Connection, name) for name in used), used
