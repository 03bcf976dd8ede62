"""``buttress queue``: list, show, replay and dead letters, with counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buttress.cli import main
from buttress.queue import RequestQueue
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
        ("sqlite:///{tmp}/missing/q.db", 1, "missing does not exist"),
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
    assert says in err
    assert err.count("\n") == 1
    assert "secret" not in err
    assert notes.read_text() == "not a database\n"  # never touched
