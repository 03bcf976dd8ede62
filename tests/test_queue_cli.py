"""``buttress queue``: list, show, replay and dead letters, with counts."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from buttress.cli import main
from buttress.queue import RequestQueue
from buttress.queue.sqlite import SQLiteQueueStore
from buttress.testing import FakeClock


def test_queue_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    clock = FakeClock(wall_start=1_900_000_000.0)  # in the future: stored times stay due
    with RequestQueue("mail", storage=url, max_attempts=1, clock=clock) as q:

        @q.handler
        def send(to: str) -> None:
            if to == "bad":
                raise ValueError("no such mailbox")

        q.put("send", ["bad"])
        q.put("send", ["x@example.org"], delay=3600)
        q.process()
    assert main(["queue", "--storage", url, "list"]) == 0
    out = capsys.readouterr().out
    assert "mail: 1 queued (0 due, 0 in flight, 1 delayed), 1 dead, 0 expired, 0 done" in out
    assert "send attempts=0" in out
    assert main(["queue", "--storage", url, "dead", "list"]) == 0
    out = capsys.readouterr().out
    assert "mail: 1 dead letters" in out
    assert "ValueError: no such mailbox" in out
    dead_id = int(out.split("#")[1].split()[0])
    assert main(["queue", "--storage", url, "show", str(dead_id), "--dead"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["args"] == {"args": ["bad"], "kwargs": {}}
    assert shown["attempts"] == 1
    assert main(["queue", "--storage", url, "show", "999"]) == 1
    assert "no item #999" in capsys.readouterr().out
    assert main(["queue", "--storage", url, "--queue", "mail", "replay"]) == 0
    assert "mail: 1 items made due now" in capsys.readouterr().out
    assert main(["queue", "--storage", url, "dead", "requeue"]) == 0
    assert "mail: 1 dead letters requeued" in capsys.readouterr().out
    assert main(["queue", "--storage", url, "list"]) == 0
    assert "mail: 2 queued (2 due" in capsys.readouterr().out
    with RequestQueue("mail", storage=url, max_attempts=1) as q:
        q.handler("send")(lambda to: (_ for _ in ()).throw(ValueError("still bad")))
        q.process()
    assert main(["queue", "--storage", url, "dead", "purge", "12345"]) == 0
    assert "mail: 0 dead letters purged" in capsys.readouterr().out
    assert main(["queue", "--storage", url, "dead", "purge"]) == 0
    assert "mail: 2 dead letters purged" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("storage", "status", "says"),
    [
        ("bogus://x", 2, "storage='bogus://x': a queue is stored in"),
        ("sqlite:///{tmp}/missing/q.db", 1, "no SQLite file at {tmp}/missing/q.db"),
        ("sqlite:///{tmp}/typo.db", 1, "no SQLite file at {tmp}/typo.db"),
        ("sqlite://remote/x.db", 2, "an SQLite URL names a local file"),
        ("sqlite:///{tmp}/notes.txt", 1, "notes.txt is not a usable SQLite database"),
        ("redis://u:secret@127.0.0.1:1/0", 1, "redis://u:***@127.0.0.1:1/0: no answer"),
    ],
)
def test_a_storage_it_cannot_use_is_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], storage: str, status: int, says: str
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    assert main(["queue", "--storage", storage.format(tmp=tmp_path), "list"]) == status
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("buttress queue: ")
    assert says.format(tmp=tmp_path) in err
    assert err.count("\n") == 1
    assert "secret" not in err
    assert notes.read_text() == "not a database\n"  # never touched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing made


def test_items_changed_in_the_file_are_listed_marked_and_shown_as_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "q.db"
    url = f"sqlite:///{path}"
    clock = FakeClock(wall_start=1_900_000_000.0)
    with RequestQueue("mail", storage=url, max_attempts=1, clock=clock) as q:

        @q.handler
        def send(to: str) -> None:
            raise ValueError("no such mailbox")

        q.put("send", ["bad"], key="dies")
        q.process()
        q.put("send", ["a"], key="args", delay=3600)
        q.put("send", ["b"], key="times", delay=3600)
        q.put("send", ["c"], key="fine", delay=3600)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE buttress_queue SET args = 'not json' WHERE key = 'args'")
        conn.execute(
            "UPDATE buttress_queue SET visible = 'soon', attempts = 'many' WHERE key = 'times'"
        )
        conn.execute("UPDATE buttress_queue_dead SET first_error_at = 'then', died = X'00'")
    conn.close()

    assert main(["queue", "--storage", url, "list"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 3
    assert "key=args" in rows[0]
    assert "[args unreadable: not JSON (Expecting value" in rows[0]
    assert "attempts='many' due 'soon' key=times" in rows[1]
    assert "[attempts unreadable: not a count]  [visible unreadable: not a time]" in rows[1]
    assert "unreadable" not in rows[2]
    assert "due 2030-03-17 18:46:40 key=fine" in rows[2]

    assert main(["queue", "--storage", url, "dead", "list"]) == 0
    out = capsys.readouterr().out
    assert "dead b'\\x00' key=dies" in out
    assert "[first_error_at unreadable: not a time]  [died unreadable: not a time]" in out
    assert "first error 'then': ValueError: no such mailbox" in out
    dead_id = int(out.split("#")[1].split()[0])
    assert main(["queue", "--storage", url, "show", str(dead_id), "--dead"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["died"], shown["first_error_at"]) == ("\x00", "then")  # a BLOB as text
    assert shown["args"] == {"args": ["bad"], "kwargs": {}}

    args_id = int(rows[0].split("#")[1].split()[0])
    assert main(["queue", "--storage", url, "show", str(args_id)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["args"] == "not json"  # the stored text
    assert shown["unreadable"] == {"args": "not JSON (Expecting value: line 1 column 1 (char 0))"}
    assert shown["key"] == "args"
    assert shown["visible"] == 1_900_003_600.0
    times_id = int(rows[1].split("#")[1].split()[0])
    assert main(["queue", "--storage", url, "show", str(times_id)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["args"] == {"args": ["b"], "kwargs": {}}
    assert (shown["visible"], shown["attempts"]) == ("soon", "many")
    assert shown["unreadable"] == {"attempts": "not a count", "visible": "not a time"}
    with sqlite3.connect(path) as conn:  # inspecting changed nothing
        stored = conn.execute("SELECT args FROM buttress_queue WHERE key = 'args'").fetchone()
    conn.close()
    assert stored == ("not json",)


def _two_queues(tmp_path: Path) -> str:
    """A file holding queues "mail" and "sms", one request each (its queue's name)."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    for name in ("mail", "sms"):
        with RequestQueue(name, storage=url) as q:
            q.handler("send")(print)
            q.put("send", [name])
    return url


def test_a_queue_the_storage_does_not_hold_is_named_with_those_it_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _two_queues(tmp_path)
    for action in (["list"], ["show", "1"], ["replay"], ["dead", "purge"]):
        assert main(["queue", "--storage", url, "--queue", "nope", *action]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == f"buttress queue: no queue 'nope' in {url}: its queues are mail, sms\n"
    assert main(["queue", "--storage", url, "--queue", "sms", "list"]) == 0
    assert capsys.readouterr().out.startswith("sms: 1 queued")
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    SQLiteQueueStore(tmp_path / "empty.db").close()
    assert main(["queue", "--storage", empty, "--queue", "mail", "list"]) == 1
    assert (
        capsys.readouterr().err
        == f"buttress queue: no queue 'mail' in {empty}: it holds no queues\n"
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--queue", "", "list"], "argument --queue: must name a queue, got ''"),
        (["list", "--limit", "0"], "argument --limit: must be an integer >= 1, got 0"),
        (["dead", "list", "--limit", "-1"], "argument --limit: must be an integer >= 1, got -1"),
        (["dead", "list", "--limit", "x"], "argument --limit: must be an integer >= 1, got 'x'"),
    ],
)
def test_usage_errors_exit_2_naming_the_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    with RequestQueue("mail", storage=url) as q:
        q.handler("send")(print)
        q.put("send", ["x"])
    with pytest.raises(SystemExit) as info:
        main(["queue", "--storage", url, *argv])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert says in err


def test_an_id_held_by_several_queues_needs_the_queue_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # item ids count within each queue: `show 1` printed the first queue's #1 without a word
    url = _two_queues(tmp_path)
    assert main(["queue", "--storage", url, "show", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "buttress queue: item #1 is in several queues (mail, sms): name one with --queue\n"
    )
    assert main(["queue", "--storage", url, "--queue", "sms", "show", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["args"] == {"args": ["sms"], "kwargs": {}}
    with RequestQueue("sms", storage=url) as q:  # one more in sms only: its id is its own
        q.handler("send")(print)
        q.put("send", ["again"])
    assert main(["queue", "--storage", url, "show", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["queue"] == "sms"
