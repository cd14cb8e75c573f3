"""Schema 5: events of one kind are read through the events_kind index."""

from __future__ import annotations

import sqlite3

from appliance import store_schema
from appliance.model import Event
from appliance.store import SCHEMA_VERSION, Store


def plan(db: sqlite3.Connection) -> str:
    rows = db.execute("EXPLAIN QUERY PLAN SELECT ts, mac, kind, detail FROM events "
                      "WHERE kind=? ORDER BY id DESC LIMIT ?", ("dhcp-rogue", 10)).fetchall()
    return " | ".join(r[-1] for r in rows)


def schema_4_database(path) -> None:
    """A database as schema 4 left it: its tables, version 4, events but no kind index."""
    db = sqlite3.connect(path)
    db.executescript(store_schema.SCHEMA)  # the tables (the kind index is not in the script)
    db.execute("INSERT INTO meta VALUES ('schema', '4')")
    db.executemany("INSERT INTO events (ts, mac, kind, detail) VALUES (?,?,?,?)",
                   [(float(i), f"52:54:00:00:00:{i % 7:02x}",
                     "dhcp-rogue" if i % 10 == 0 else "dhcp-discover", f"n{i}")
                    for i in range(500)])
    db.commit()
    db.close()


def test_migration_from_schema_4_adds_the_kind_index_and_keeps_events(tmp_path):
    path = tmp_path / "old.db"
    schema_4_database(path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT name FROM sqlite_master WHERE name='events_kind'").fetchone() \
        is None
    assert "events_kind" not in plan(db)
    db.close()
    store = Store(path).open()
    rogues = store.events_of_kind("dhcp-rogue", limit=5)
    assert [e.detail for e in rogues] == ["n450", "n460", "n470", "n480", "n490"]
    assert len(store.events_of_kind("dhcp-rogue")) == 50
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == \
        (str(SCHEMA_VERSION),) == ("6",)
    assert "USING COVERING INDEX events_kind" in plan(db) or \
        "USING INDEX events_kind" in plan(db)
    assert "TEMP B-TREE" not in plan(db)  # the index gives the order too
    assert db.execute("SELECT count(*) FROM events").fetchone() == (500,)
    db.close()


def test_new_database_has_the_index_and_reads_newest_of_kind(tmp_path):
    store = Store(tmp_path / "new.db").open()
    for i in range(20):
        store.add_event(Event(float(100 - i), "52:54:00:00:00:01",
                              "dhcp-rogue" if i % 2 else "dhcp-ack", str(i)))
    assert [e.detail for e in store.events_of_kind("dhcp-rogue", 3)] == ["15", "17", "19"]
    store.close()
    db = sqlite3.connect(tmp_path / "new.db")
    assert "events_kind" in plan(db)
    db.close()
