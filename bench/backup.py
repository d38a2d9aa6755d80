#!/usr/bin/python3
"""Backup and restore of Open WebUI's data on a large database: backup time and size, request
latency during an online backup beside without one, the restore's outage, the upgrade's outage.

Boots the cached Debian 12 root file system in systemd-nspawn (private network) with the real
open-webui installed through the .deb exactly as tests/integration/test_real_webui.py's module
fixture does (its configuration, the fake Ollama, the cached wheels bound read-only; version
OLD of that module), then in that one container:

1. a synthetic database: Open WebUI stopped (and localaid.service, so that nothing starts it
   meanwhile), --rows rows of about --row-kb KB each inserted into its real `chat` table (as
   user open-webui, with python3's sqlite3; the columns read from PRAGMA table_info(chat)),
   owned by the admin localaid made; started again and waited for;
2. `localaid backup` (--unit: localaid-backup.service, as the timer starts it): its time, and
   the backup's size and files;
3. requests to Open WebUI timed for --poll-seconds without a backup (after --settle seconds of
   quiet), then while that backup runs: GET /health, GET /api/v1/chats/?page=1 (the admin's chat list: reads the chat
   table) and POST /api/v1/chats/new (a write), one of each every 0.25 s; the median, p99,
   max, the count over 1 s and the failed ones (the goal: none over 1 s, none failed);
4. `localaid restore latest`: its `outage=` and the longest gap between /health answers
   (polled every 50 ms); the goal: at most 30 s plus Open WebUI's start;
5. `localaid upgrade webui --version NEW`: its `downtime=` and the longest /health gap, as
   test_real_webui.py's test_upgrade_keeps_users_and_chats computes it.

For 4 and 5 also the seconds of each step, from the times their lines came (stop, keep the
current state, put back, start; the upgrade's online backup of the data, stop, its copy of
webui.db for the rollback, start).

The real open-webui's wheels come from the cache tests/integration/test_real_webui.py prepares
(/var/cache/localaid-tests/real-webui): run that module once first.

    sudo bench/backup.py                              # 100k chats of 10 KB: webui.db 1.3 GB (SQLite's
                                                      # overflow pages); about 4 minutes
    sudo bench/backup.py --rows 5000 --row-kb 10      # 65 MB, a quick run

Prints a table (--json: one JSON line).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from common import deb_and_rootfs, log, print_table  # noqa: E402  (also puts tests/integration on the path)

from conftest import boot  # noqa: E402
from harness import wait_for  # noqa: E402
from test_real_webui import (CONFIG, FAKES, GUEST_WHEELS, NEW, OLD, POLLER, PORT, WHEELS, admin_token,  # noqa: E402
                             api, complete, health_gaps, serving, start_fake_ollama)

DATA = "/var/lib/open-webui"
DB = f"{DATA}/webui.db"
STORE = "/var/lib/localaid/backups"
URL = f"http://127.0.0.1:{PORT}"
SLOW = 1.0  # a request slower than this counts against the goal

# Run as user open-webui with Open WebUI stopped: argv db user_id rows row_kb. Fills the columns
# Open WebUI's chat list filters on and every other column of `chat` that has no default and may
# not be NULL; prints what it found and did.
FILL = r"""
import json, os, sqlite3, sys, time, uuid
db, user, rows, kb = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
con = sqlite3.connect(db, timeout=60)
cols = con.execute("PRAGMA table_info(chat)").fetchall()
print("schema", json.dumps([[c[1], c[2], c[3], c[4]] for c in cols]), flush=True)
print("journal_mode", con.execute("PRAGMA journal_mode").fetchone()[0], flush=True)
print("tables", " ".join(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY 1")))
words = "the wind came from the west and the harbour boats stayed in all day while the keeper counted".split()
part = " ".join(words[i % len(words)] for i in range(int(kb * 1024 / 4 / 5)))[: int(kb * 1024 / 4)]
now = int(time.time())
def value(name, typ, i):
    known = {"id": str(uuid.uuid4()), "user_id": user, "title": f"Bench chat {i}", "created_at": now - rows + i,
             "updated_at": now - rows + i, "archived": 0, "pinned": 0, "meta": "{}"}
    if name == "chat":
        m = {k: {"id": k, "parentId": None, "childrenIds": [], "role": r, "content": f"{i} {r}: {part}"}
             for k, r in (("u", "user"), ("a", "assistant"))}
        m["u"]["childrenIds"], m["a"]["parentId"] = ["a"], "u"
        return json.dumps({"title": f"Bench chat {i}", "models": ["llama3.2:latest"], "messages": list(m.values()),
                           "history": {"currentId": "a", "messages": m}})
    if name in known:
        return known[name]
    t = typ.upper()
    return 0 if ("INT" in t or "BOOL" in t) else "{}" if "JSON" in t else ""
# archived and pinned too: Open WebUI lists a chat only where archived = 0 (NULL is left out)
need = [(c[1], c[2]) for c in cols if c[1] in ("id", "user_id", "title", "chat", "created_at", "updated_at",
                                               "archived", "pinned", "meta") or (c[3] and c[4] is None)]
sql = f"INSERT INTO chat ({', '.join(n for n, _ in need)}) VALUES ({', '.join('?' for _ in need)})"
t0 = time.monotonic()
for start in range(0, rows, 1000):
    con.executemany(sql, [[value(n, t, i) for n, t in need] for i in range(start, min(rows, start + 1000))])
    con.commit()
if con.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print("rows", con.execute("SELECT count(*) FROM chat").fetchone()[0], flush=True)
print("seconds", f"{time.monotonic() - t0:.1f}", flush=True)
print("size", os.path.getsize(db), flush=True)
"""

COUNT = r"""
import sqlite3, sys
con = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=60)
print(con.execute("SELECT count(*) FROM chat").fetchone()[0], con.execute("PRAGMA journal_mode").fetchone()[0])
"""

# argv: base url, token file, output: each request timed, "<unix time> <kind> <1|0> <seconds> <bytes>"
LATENCY_POLLER = r"""
import json, sys, time, urllib.request
base, token, out = sys.argv[1], open(sys.argv[2]).read().strip(), sys.argv[3]
auth = {"Authorization": "Bearer " + token}
chat = json.dumps({"chat": {"title": "written while the bench polls", "messages": [], "history": {}}}).encode()
REQS = [("health", "GET", "/health", None, {}),
        ("list", "GET", "/api/v1/chats/?page=1", None, auth),
        ("write", "POST", "/api/v1/chats/new", chat, dict(auth, **{"Content-Type": "application/json"}))]
f = open(out, "a", buffering=1)
nxt = time.monotonic()
while True:
    for kind, method, path, data, headers in REQS:
        t, t0 = time.time(), time.monotonic()
        try:
            req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
            with urllib.request.urlopen(req, timeout=30) as r:
                size = len(r.read())
                ok = r.status == 200
        except Exception:
            ok, size = False, 0
        f.write(f"{t:.3f} {kind} {int(ok)} {time.monotonic() - t0:.4f} {size}\n")
    nxt += 0.25
    time.sleep(max(0.0, nxt - time.monotonic()))
"""
KINDS = {"health": "GET /health", "list": "GET /api/v1/chats/?page=1", "write": "POST /api/v1/chats/new"}


# ----------------------------------------------------------------------------- the stack
def stack(rootfs: Path, deb: Path):
    """test_real_webui.py's container: booted, the .deb installed, Open WebUI OLD serving."""
    binds = [(str(WHEELS), GUEST_WHEELS, True), (str(FAKES / "ollama"), "/opt/fakes/ollama", True)]
    c = boot(rootfs, deb, install=True, config=CONFIG, setup=start_fake_ollama, private_network=True,
             name="bench-backup", binds=binds)
    try:
        log(f"apt install done in {c.timings['apt_install']:.1f} s; building Open WebUI {OLD}")
        c.systemctl("start", "localaid-webui-setup.service", timeout=3600)
        wait_for(lambda: serving(c, OLD), timeout=600, interval=0.5, message=f"real Open WebUI {OLD} serving")
        wait_for(lambda: healthy(c), timeout=300, interval=1,
                 message=lambda: f"localaid healthy ({c.unit_property('localaid.service', 'StatusText')!r})")
    except BaseException:
        c.stop()
        raise
    log(f"Open WebUI {OLD} serving, localaid healthy")
    return c


def healthy(c) -> bool:
    r = c.run(["localaid", "status", "--json"], check=False)
    return r.returncode == 0 and json.loads(r.stdout)["state"]["healthy"]


def counted(c, db: str = DB, user: str | None = "open-webui") -> tuple[int, str]:
    """Rows of the chat table, the database's journal mode (Open WebUI's read as open-webui)."""
    n, mode = c.run(["python3", "-c", COUNT, db], user=user).stdout.split()
    return int(n), mode


def fill(c, token: str, rows: int, row_kb: float) -> dict:
    """The synthetic database: Open WebUI and localaid stopped, rows put in, both started again."""
    code, me = api(c, "GET", "/api/v1/auths/", token=token)
    assert code == 200 and me.get("id"), (code, me)
    c.systemctl("stop", "localaid.service", "open-webui.service", timeout=120)
    log(f"inserting {rows} chats of about {row_kb:g} KB into {DB}")
    r = c.run(["python3", "-c", FILL, DB, me["id"], str(rows), str(row_kb)], user="open-webui",
              timeout=3600)
    out = dict(ln.split(" ", 1) for ln in r.stdout.splitlines() if " " in ln)
    log(f"filled in {out['seconds']} s: {out['rows']} rows, {int(out['size']) / 1e6:.0f} MB, journal_mode "
        f"{out['journal_mode']}; tables: {out['tables']}")
    log(f"chat's columns (name, type, notnull, default): {out['schema']}")
    t0 = time.monotonic()
    c.systemctl("start", "open-webui.service")
    wait_for(lambda: serving(c, OLD), timeout=900, interval=0.5, message=f"Open WebUI {OLD} serving the big database")
    start = time.monotonic() - t0
    code, listed = api(c, "GET", "/api/v1/chats/?page=1", token=token)
    if code != 200 or len(listed) < min(60, rows):
        sys.exit(f"Open WebUI does not list the synthetic chats (GET /api/v1/chats/?page=1: {code}, "
                 f"{len(listed) if isinstance(listed, list) else listed!r}): the fill does not match its schema")
    c.systemctl("start", "localaid.service")
    wait_for(lambda: healthy(c), timeout=300, interval=1,
             message=lambda: f"localaid healthy ({c.unit_property('localaid.service', 'StatusText')!r})")
    du = c.run(["du", "-sb", DATA]).stdout.split()[0]
    log(f"Open WebUI serving again {start:.1f} s after its start; data dir {int(du) / 1e6:.0f} MB")
    return {"rows": int(out["rows"]), "db_bytes": int(out["size"]), "data_dir_bytes": int(du),
            "fill_s": float(out["seconds"]), "journal_mode": out["journal_mode"], "start_s": start,
            "columns": json.loads(out["schema"])}


# ------------------------------------------------------------------------------- pollers
_units = itertools.count(1)


def poller(c, unit: str, script: str, *argv: str) -> tuple[str, str]:
    """A poller started in unit `unit`-<n> (a name not used before: a stopped transient unit may
    not be unloaded yet); the unit and the path of its log, once it has a line."""
    unit = f"{unit}-{next(_units)}"
    out = f"/root/{unit}.log"
    c.write(f"/root/{unit}.py", script)
    c.run(["rm", "-f", out])
    c.run(["systemd-run", f"--unit={unit}", "--collect", "/usr/bin/python3", f"/root/{unit}.py", *argv, out])
    wait_for(lambda: c.exists(out) and c.read(out).strip(), timeout=30, message=f"{unit}'s first line")
    return unit, out


def latency_lines(c, token: str, seconds: float | None, during=None) -> tuple[list[str], float, float, object]:
    """Timed requests for `seconds`, or while `during()` runs: the poller's lines, the window
    (host time: the container shares its clock) and what `during` returned."""
    c.write("/root/bench-token", token, mode=0o600)
    unit, out = poller(c, "latency-poll", LATENCY_POLLER, URL, "/root/bench-token")
    try:
        t0 = time.time()
        result = during() if during else time.sleep(seconds)
        t1 = time.time()
    finally:
        c.systemctl("stop", unit, check=False)
    return c.read(out).splitlines(), t0, t1, result


def stats(lines: list[str], t0: float, t1: float) -> dict:
    """Per kind of request in [t0, t1]: count, median, p99, max (s), over SLOW, failed."""
    by: dict[str, list[tuple[bool, float]]] = {k: [] for k in KINDS}
    for ln in lines:
        t, kind, ok, lat, _size = ln.split()
        if t0 <= float(t) <= t1 and kind in by:
            by[kind].append((ok == "1", float(lat)))
    out = {}
    for kind, samples in by.items():
        lat = sorted(x for _, x in samples)
        out[kind] = {"n": len(samples), "median": statistics.median(lat) if lat else None,
                     "p99": lat[max(0, math.ceil(0.99 * len(lat)) - 1)] if lat else None,
                     "max": lat[-1] if lat else None, "slow": sum(1 for x in lat if x > SLOW),
                     "failed": sum(1 for ok, _ in samples if not ok)}
    return out


def with_health(c, what: str, work) -> tuple[object, dict]:
    """`work()` while /health is polled every 50 ms (test_real_webui's POLLER); its result and
    the longest gap between answers (health_gaps)."""
    unit, out = poller(c, "health-poll", POLLER, f"{URL}/health")
    try:
        wait_for(lambda: " 1\n" in c.read(out), timeout=30, message="/health answering before " + what)
        result = work()
        time.sleep(0.3)
    finally:
        c.systemctl("stop", unit, check=False)
    gap, n, failed = health_gaps(c.read(out).splitlines())
    return result, {"gap_s": gap, "polls": n, "failed": failed}


# ------------------------------------------------------------------------------ measured
def field(text: str, name: str) -> float | None:
    """The seconds of `name=<x>s` in localaid's output (its last mention), None without."""
    found = re.findall(rf"\b{name}=([0-9.]+)s\b", text)
    return float(found[-1]) if found else None


def run_backup(c, unit: bool) -> tuple[int, str]:
    """`localaid backup` by hand, or (unit) as the timer runs it: localaid-backup.service (Nice=10,
    IOSchedulingClass=idle), its journal read afterwards. The exit status and what it said."""
    if not unit:
        r = c.run(["localaid", "backup"], check=False, timeout=7200)
        return r.returncode, r.stdout + r.stderr
    since = c.run(["date", "+%Y-%m-%d %H:%M:%S"]).stdout.strip()
    r = c.systemctl("start", "localaid-backup.service", check=False, timeout=7200)
    text = c.run(["journalctl", "--no-pager", "-o", "cat", "-u", "localaid-backup.service", "--since", since],
                 check=False).stdout
    return r.returncode, text + r.stderr


def backup(c, unit: bool = False) -> dict:
    """`localaid backup`, timed; the backup's path, size (du and the manifest) and files."""
    t0 = time.monotonic()
    rc, text = run_backup(c, unit)
    took = time.monotonic() - t0
    if rc != 0:
        sys.exit(f"localaid backup failed ({rc}):\n{text[-3000:]}")
    m = re.search(r"backup (\S+): (.+) in (\d+) files", text)
    path = m.group(1) if m else f"{STORE}/" + c.run(["ls", STORE]).stdout.split()[-1]
    manifest = json.loads(c.read(f"{path}/manifest.json"))
    du = int(c.run(["du", "-sb", path]).stdout.split()[0])
    size = sum(f["size"] for f in manifest["files"].values())
    log(f"localaid backup: {took:.1f} s, {path}: {m.group(2) if m else '?'} ({du / 1e6:.0f} MB on disk), "
        f"{len(manifest['files'])} files; problems: {manifest['problems'] or 'none'}")
    return {"seconds": took, "path": path, "bytes": size, "du_bytes": du, "files": len(manifest["files"]),
            "problems": manifest["problems"], "said": m.group(0) if m else text.strip().splitlines()[-1:]}


# Each line of a command's output with the time it came ("<unix time> <line>"); its exit status kept.
STAMPED = 'set -o pipefail; "$@" 2>&1 | while IFS= read -r l; do printf "%s %s\\n" "$(date +%s.%N)" "$l"; done'
RESTORE_STEPS = (("stop", r"stopping Open WebUI"), ("keep", r"keeping the current state"),
                 ("put back", r"^restoring \S+ \(\d+ files\)"), ("start", r"starting Open WebUI"),
                 ("end", r"^restored "))
UPGRADE_STEPS = (("backup of the data, online", r"backing up Open WebUI's data"), ("stop", r"stopping the old version"),
                 ("copy of webui.db", r": backing up webui\.db"), ("start", r": starting$"), ("end", r"Open WebUI upgraded"))


def job(c, argv: list[str], version: str, marks) -> dict:
    """`argv` (a journaled job that stops Open WebUI) until `version` serves again: its time,
    output, and the seconds from each of `marks` (name, pattern of its first line) to the next."""
    t0 = time.monotonic()
    r = c.run(["bash", "-c", STAMPED, "bash", *argv], check=False, timeout=7200)
    took = time.monotonic() - t0
    stamped = [ln.split(" ", 1) for ln in r.stdout.splitlines() if " " in ln]
    text = "\n".join(line for _, line in stamped)
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({r.returncode}):\n{text[-3000:]}{r.stderr[-1000:]}")
    wait_for(lambda: serving(c, version), timeout=300, interval=0.2, message=f"{version} serving after {argv[1]}")
    seen = [(name, next((float(t) for t, line in stamped if re.search(pat, re.sub(r"^<\d>", "", line))), None))
            for name, pat in marks]
    seen = [(n, t) for n, t in seen if t is not None]
    steps = {a[0]: round(b[1] - a[1], 1) for a, b in zip(seen, seen[1:])}
    return {"seconds": took, "text": text, "steps": steps}


def restore(c, token: str) -> dict:
    """`localaid restore latest` under the /health poller; its outage= and the gap seen."""
    log("localaid restore latest")
    res, gap = with_health(c, "the restore", lambda: job(c, ["localaid", "restore", "latest"], OLD, RESTORE_STEPS))
    code, _ = api(c, "GET", "/api/v1/chats/?page=1", token=token)
    rows, _mode = counted(c)
    out = {"seconds": res["seconds"], "outage_said": field(res["text"], "outage"), "health": gap, "rows_after": rows,
           "list_after": code, "steps": res["steps"], "last_line": res["text"].strip().splitlines()[-1]}
    log(f"restore: {out['seconds']:.1f} s; said outage {out['outage_said']} s; /health gap {gap['gap_s']:.2f} s; "
        f"steps {out['steps']}; {rows} chats after; chat list answers {code}; {out['last_line']}")
    return out


def upgrade(c) -> dict:
    """`localaid upgrade webui --version NEW` under the /health poller (test_real_webui's way)."""
    log(f"localaid upgrade webui --version {NEW}")
    res, gap = with_health(c, "the upgrade", lambda: job(c, ["localaid", "upgrade", "webui", "--version", NEW], NEW,
                                                         UPGRADE_STEPS))
    said = next((ln for ln in res["text"].splitlines() if "Open WebUI upgraded" in ln), "")
    marker = json.loads(c.read(f"/var/lib/localaid/webui/venvs/{NEW}/.localaid-complete"))
    phases = re.search(r"phases=(\"[^\"]*\"|\S+)", said)
    out = {"seconds": res["seconds"], "downtime_said": field(said, "downtime"), "health": gap, "steps": res["steps"],
           "venv_build_s": marker["seconds"], "phases": phases.group(1).strip('"') if phases else None}
    log(f"upgrade: {out['seconds']:.1f} s in all (venv build {marker['seconds']} s); said downtime "
        f"{out['downtime_said']} s; /health gap {gap['gap_s']:.2f} s ({gap['failed']} of {gap['polls']} polls "
        f"failed); steps {out['steps']}; {said}")
    return out


def measure(c, a) -> dict:
    """Everything, in order, in the one container."""
    token = admin_token(c)
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    res = {"host": {"cores": os.cpu_count(), "mem_gb": round(mem / 2**30, 1)},
           "versions": [OLD, NEW], "settle_s": a.settle, "rows": a.rows, "row_kb": a.row_kb, "via_unit": a.unit}
    res["db"] = fill(c, token, a.rows, a.row_kb)
    token = admin_token(c)
    log(f"letting Open WebUI settle for {a.settle:g} s after its start")
    time.sleep(a.settle)
    log(f"timing requests for {a.poll_seconds:g} s without a backup")
    lines, t0, t1, _ = latency_lines(c, token, a.poll_seconds)
    res["idle"] = stats(lines, t0, t1)
    log("timing requests while localaid backup runs")
    lines, t0, t1, res["backup"] = latency_lines(c, token, None, lambda: backup(c, a.unit))
    res["during"] = stats(lines, t0, t1)
    res["rows_in_backup"] = counted(c, f"{res['backup']['path']}/data/webui.db", None)[0]
    res["restore"] = restore(c, token)
    res["upgrade"] = upgrade(c)
    return res


# -------------------------------------------------------------------------------- report
def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f} ms"


def latency_rows(res: dict) -> list[list]:
    rows = []
    for kind, label in KINDS.items():
        for when in ("idle", "during"):
            s = res[when][kind]
            rows.append([f"{label}, {'without a backup' if when == 'idle' else 'during the backup'}",
                         f"median {ms(s['median'])}, p99 {ms(s['p99'])}, max {ms(s['max'])}; "
                         f"{s['slow']} over {SLOW:g} s, {s['failed']} failed, of {s['n']}",
                         "none over 1 s, none failed" if when == "during" else ""])
    return rows


def steps_text(steps: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in steps.items()) or "-"


def report(res: dict) -> None:
    db, b, r, u = res["db"], res["backup"], res["restore"], res["upgrade"]
    rows = [["host", f"{res['host']['cores']} cores, {res['host']['mem_gb']} GiB", ""],
            ["open-webui", f"{OLD}, then {NEW} (real wheels, no torch)", ""],
            ["synthetic webui.db", f"{db['rows']} chats, {db['db_bytes'] / 1e6:.0f} MB "
             f"(journal_mode {db['journal_mode']}); "
             f"data dir {db['data_dir_bytes'] / 1e6:.0f} MB; filled in {db['fill_s']:.0f} s", "about 1 GB, 100k chats"],
            ["Open WebUI start on it", f"{db['start_s']:.1f} s to serving", ""],
            ["localaid-backup.service" if res["via_unit"] else "localaid backup",
             f"{b['seconds']:.1f} s; {b['bytes'] / 1e6:.0f} MB in {b['files']} files "
             f"({b['du_bytes'] / 1e6:.0f} MB on disk); {res['rows_in_backup']} chats in it", ""],
            *latency_rows(res),
            ["localaid restore latest", f"{r['seconds']:.1f} s; outage={r['outage_said']} s said; /health gap "
             f"{r['health']['gap_s']:.1f} s ({r['health']['failed']} of {r['health']['polls']} polls failed); "
             f"{r['rows_after']} chats after", "≤ 30 s + Open WebUI's start"],
            [f"localaid upgrade webui {OLD} → {NEW}", f"{u['seconds']:.1f} s (venv build {u['venv_build_s']} s); "
             f"downtime={u['downtime_said']} s said; /health gap {u['health']['gap_s']:.1f} s "
             f"({u['health']['failed']} of {u['health']['polls']} polls failed)", ""]]
    print_table(f"Backup and restore of Open WebUI's data, {db['rows']} chats of about {res['row_kb']:g} KB, "
                f"one Debian 12 container", ["figure", "value", "goal"], rows)
    print(f"\nrestore, seconds a step (from its output): {steps_text(r['steps'])}")
    print(f"upgrade, seconds a step (from its output): {steps_text(u['steps'])}")
    if u.get("phases"):
        print(f"upgrade phases (localaid's journal line): {u['phases']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="chats inserted (default 100000)")
    ap.add_argument("--row-kb", type=float, default=10.0, help="KB of chat JSON a row (default 10: about 1 GB)")
    ap.add_argument("--poll-seconds", type=float, default=30.0, help="seconds requests are timed without a backup")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds left idle between Open WebUI's start on "
                    "the big database and the timing without a backup (default 30: its first requests are slower)")
    ap.add_argument("--unit", action="store_true", help="back up as the timer does: systemctl start "
                    "localaid-backup.service (Nice=10, idle I/O class) instead of `localaid backup` by hand")
    ap.add_argument("--deb", type=Path, help="localaid .deb (default: a fresh tools/build-deb)")
    ap.add_argument("--rootfs", type=Path, help="root file system (default: the cached tools/build-rootfs)")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it boots a systemd-nspawn container")
    if not (complete(OLD) and complete(NEW)):
        sys.exit(f"the real open-webui {OLD} and {NEW}'s wheels are not cached in {WHEELS}: run "
                 "`sudo tools/test tests/integration/test_real_webui.py` once first")
    deb, rootfs = deb_and_rootfs(a.deb, a.rootfs)
    c = stack(rootfs, deb)
    try:
        res = measure(c, a)
    finally:
        c.stop()
    if a.json:
        print(json.dumps(res))
    else:
        report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
