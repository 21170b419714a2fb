"""The state database at start: checked (``PRAGMA quick_check``), migrated in order
(``PRAGMA user_version``), and every failure one line naming the file and what to do.

Real files: a database the daemon wrote while running against the simulated rigs, then
garbage written over each of its pages in turn, and ``rigpilot run`` started on each copy."""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SimFleet
from helpers import KEYS, write_config

import daemon.store as store_module
from daemon.config import load_settings
from daemon.run import main as run_main
from daemon.store import DB_NAME, SCHEMA_VERSION, Store, StoreError

PAGE_HINT = "move it aside"


def page_size(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


def quick_check(path: Path) -> list[str]:
    try:
        db = sqlite3.connect(path)
        try:
            return [str(r[0]) for r in db.execute("PRAGMA quick_check").fetchall()]
        finally:
            db.close()
    except sqlite3.Error as exc:
        return [str(exc)]


def damage(path: Path, page: int, size: int) -> None:
    garbage = random.Random(page).randbytes(size)
    with path.open("r+b") as f:
        f.seek((page - 1) * size)
        f.write(garbage)


@pytest.fixture(scope="module")
def written(sim_fleet: SimFleet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state database written by the daemon: three dry-run ticks over six rigs."""
    folder = tmp_path_factory.mktemp("written")
    config = write_config(folder / "r.toml", sim_fleet)
    assert run_main(["--config", str(config), "--dry-run", "--ticks", "3"]) == 0
    db = load_settings(config).state_dir / DB_NAME
    assert (
        not db.with_name(DB_NAME + "-wal").exists()
        or db.with_name(DB_NAME + "-wal").stat().st_size == 0
    ), "closed cleanly: everything is in the main file"
    return db


@pytest.mark.slow
def test_damage_in_any_page_gives_one_clear_line_never_a_traceback(
    written: Path,
    sim: SimFleet,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    size = page_size(written)
    pages = written.stat().st_size // size
    assert pages >= 6, f"the daemon wrote only {pages} pages"
    refused = []
    for page in range(1, pages + 1):
        folder = tmp_path / f"page{page}"
        folder.mkdir()
        config = write_config(folder / "r.toml", sim)
        db = load_settings(config).state_dir / DB_NAME
        db.parent.mkdir(parents=True)
        shutil.copy(written, db)
        damage(db, page, size)
        check = quick_check(db)
        capfd.readouterr()
        rc = run_main(["--config", str(config), "--dry-run", "--ticks", "1"])
        err = capfd.readouterr().err
        assert "Traceback" not in err, f"page {page}: {err}"
        said = [line for line in err.splitlines() if line.startswith("rigpilot run:")]
        if rc == 2:
            assert len(said) == 1, f"page {page}: {said}"
            assert str(db) in said[0] and PAGE_HINT in said[0], f"page {page}: {said[0]}"
            assert "pins" in said[0] and "site target" in said[0]
            refused.append(page)
        else:
            assert rc == 0, f"page {page}: exit {rc}: {err[-2000:]}"
            assert check == ["ok"], f"page {page}: ran on a file failing the check: {check}"
    assert 1 in refused and len(refused) >= pages - 2, f"refused only pages {refused} of {pages}"
    print(f"refused {len(refused)} of {pages} pages")


@pytest.mark.slow
def test_the_real_command_exits_2_with_one_line(
    written: Path, sim: SimFleet, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "r.toml", sim, keys=KEYS[:2])
    db = load_settings(config).state_dir / DB_NAME
    db.parent.mkdir(parents=True)
    shutil.copy(written, db)
    damage(db, 4, page_size(db))
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(config), "--ticks", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("rigpilot run:")]
    assert len(said) == 1 and str(db) in said[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_version_2_file_drops_the_unread_commands_table(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    old = sqlite3.connect(path)  # as rigpilot with schema 2 wrote it, commands table and all
    for step in store_module.MIGRATIONS[:2]:
        for statement in step:
            old.execute(statement)
    old.execute("INSERT INTO commands VALUES (1, 1.0, 'r1', 'sleep', NULL, 1, 'sent', '', 'x')")
    old.execute("""INSERT INTO docs VALUES ('loop', '{"site_target": {"kw": 500}}', 1.0)""")
    old.execute("PRAGMA user_version=2")
    old.commit()
    old.close()
    store = Store(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master")}
        assert "commands" not in tables and "seen" in tables
        assert store.get("loop") == {"site_target": {"kw": 500}}
    finally:
        store.close()


def test_a_schema_change_migrates_an_older_file_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / DB_NAME
    Store(path).close()  # the current version
    later = ("ALTER TABLE seen ADD COLUMN note TEXT",)
    last = ("UPDATE seen SET note = 'migrated'", "CREATE TABLE extra (x INTEGER)")
    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS, later, last))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    store = Store(path)
    try:
        store.put({}, seen=[("pin", "t-1", 1.0, None, None)])
        assert store.db.execute("SELECT note FROM seen").fetchall() == [(None,)]
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 2
        assert store.db.execute("SELECT COUNT(*) FROM extra").fetchone()[0] == 0
    finally:
        store.close()


def test_a_newer_rigpilots_file_is_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=7")
    db.close()
    with pytest.raises(StoreError) as err:
        Store(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text and "newer rigpilot" in text


def test_a_file_sqlite_cannot_open_is_not_called_damaged(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    path.mkdir()  # something that is not a file where the database should be
    with pytest.raises(StoreError) as err:
        Store(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text
    assert "cannot be opened or written" in text and "move it aside" not in text
