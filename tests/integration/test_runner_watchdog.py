"""The wedged-runner watchdog on the shipped defaults, in a booted Debian 12 container with the
built .deb installed by apt: Ollama (the fake, release 0.30.12: a `llama-server` runner child per
loaded model) as its install script leaves it, the configuration untouched but for where the
doubles are.

- A long answer and then a queue of requests (the default OLLAMA_NUM_PARALLEL lets the fake run
  one at a time) keep the runner working for longer than quiet + canary_timeout: no restart;
  once the work ends, one canary goes and is answered.
- A runner that wedges mid-answer (the fake's `runner_wedge`: no CPU, no output, its request never
  answered, while `/` and `/api/version` answer) is restarted within 60 s of its last work, with
  one journal line naming the cause and the evidence; the model is warm and answers again.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from conftest import boot, install_deb
from harness import install_fake_ollama, wait_for
from test_auto_model import DOUBLES, expected_cpu_pick, healthy, status

FAULTS = "/run/fake-ollama/faults.json"


@pytest.fixture(scope="module")
def box(rootfs, deb, wheelhouse):
    def setup(c):
        c.write("/etc/pip.conf", "[global]\nno-index = true\n")
        install_fake_ollama(c, version="0.30.12")
    c = boot(rootfs, deb, name="runner-watchdog", setup=setup, private_network=True,
             binds=[(str(wheelhouse), "/opt/wheelhouse", True)])
    install_deb(c, deb, conf_d={"50-doubles.yaml": DOUBLES})
    c.model = expected_cpu_pick(c)
    wait_for(lambda: healthy(c) and "1 model warm" in status(c), timeout=180, interval=0.5,
             message=lambda: f"healthy with the pick warm (last: {status(c)!r})")
    yield c
    c.stop()


def generate(c, model, prompt, timeout=300) -> dict:
    r = c.run(["curl", "-s", "-m", str(timeout), "http://127.0.0.1:11434/api/generate", "-d",
               json.dumps({"model": model, "prompt": prompt, "stream": False})], check=False, timeout=timeout + 10)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {"error": f"curl exit {r.returncode}: {r.stdout[-200:]}"}


def actions(c, kind) -> list[dict]:
    return [a for a in json.loads(c.read("/run/localaid/status.json"))["recent_actions"] if a["kind"] == kind]


def n_restarts(c) -> int:
    return int(c.unit_property("ollama.service", "NRestarts"))


def runner(c) -> tuple[int, str]:
    """The llama-server child of ollama.service (its PID and name)."""
    pids = c.run(["sh", "-c", "cat /sys/fs/cgroup/system.slice/ollama.service/cgroup.procs 2>/dev/null || "
                  "cat /sys/fs/cgroup/systemd/system.slice/ollama.service/cgroup.procs"]).stdout.split()
    main = c.unit_property("ollama.service", "MainPID")
    [pid] = [p for p in pids if p != main]
    return int(pid), c.read(f"/proc/{pid}/comm").strip()


def test_a_long_answer_and_a_queue_are_never_taken_for_a_wedge(box):
    c = box
    assert c.read("/etc/localaid/localaid.yaml") == c.read("/usr/share/localaid/localaid.yaml")  # as shipped
    start_pid = c.unit_property("ollama.service", "MainPID")
    # 50 s of answer, then three more queued behind it (10 s each): 80 s of work, longer than
    # quiet (15 s) + canary_timeout (30 s) twice over.
    c.write(FAULTS, json.dumps({"gen_tokens": 250, "gen_rate": 5, "gen_cpu": 0.02}))
    answers: list[dict] = []
    first = threading.Thread(target=lambda: answers.append(generate(c, c.model, "a long story")))
    first.start()
    time.sleep(1.0)
    c.write(FAULTS, json.dumps({"gen_tokens": 50, "gen_rate": 5, "gen_cpu": 0.02}))
    queued = [threading.Thread(target=lambda: answers.append(generate(c, c.model, "next"))) for _ in range(3)]
    for t in queued:
        t.start()
    for t in [first, *queued]:
        t.join(timeout=200)
    c.write(FAULTS, "{}")
    assert sorted(a.get("eval_count") for a in answers) == [50, 50, 50, 250], answers
    assert runner(c)[1] == "llama-server"
    # Quiet now: a canary about 15 s later, answered at once; nothing restarted, ever. (The model's
    # preload was work too: its canary may have gone before, queued behind the long answer and
    # timed out while the runner worked: busy, not wedged.)
    wait_for(lambda: (lambda a: a and a[-1]["outcome"].startswith("ok"))(actions(c, "canary")), timeout=40,
             message=lambda: f"a canary after the work, answered ({actions(c, 'canary')})")
    assert len(actions(c, "canary")) <= 2
    assert actions(c, "kill-restart") == [] and n_restarts(c) == 0
    assert c.unit_property("ollama.service", "MainPID") == start_pid
    assert "wedged" not in c.journal("localaid.service", output="cat")


def test_a_wedged_runner_is_restarted_within_a_minute_of_its_last_work(box):
    c = box
    before_pid, name = runner(c)
    c.write(FAULTS, json.dumps({"runner_wedge": True, "wedge_after": 3, "gen_tokens": 20, "gen_rate": 10,
                                "gen_cpu": 0.02}))
    hung: list[dict] = []
    last_work = time.monotonic()  # (at the latest: the prompt and three tokens at 10 a second follow)
    threading.Thread(target=lambda: hung.append(generate(c, c.model, "hello", timeout=120)), daemon=True).start()
    time.sleep(10)
    assert not hung  # wedged: no answer
    c.write(FAULTS, "{}")  # a wedge does not heal by itself
    # Ollama's API stays green meanwhile, and STATUS does not call the runner wedged before the canary's end.
    assert c.run(["curl", "-sf", "-m", "2", "http://127.0.0.1:11434/api/version"], check=False).returncode == 0
    assert "ollama ok" in status(c)
    restart = wait_for(lambda: [a for a in actions(c, "kill-restart") if a["cause"] == "wedged runner"],
                       timeout=75, interval=0.2, message=lambda: f"the wedged runner restarted (last: {status(c)!r}, "
                       f"actions {json.loads(c.read('/run/localaid/status.json'))['recent_actions'][-4:]}, journal "
                       f"{c.journal('localaid.service', output='cat')[-1500:]})")
    detected = time.monotonic() - last_work
    print(f"\nwedged runner: restarted {detected:.1f} s after its last work")
    assert detected <= 60
    [a] = restart
    assert re.search(rf"no work by runner {name} {before_pid} for 4\d s \(CPU and GPU\), and a one-token request "
                     rf"to {re.escape(c.model)} did not end within 30 s; Ollama's API still answers", a["evidence"]), a
    journal = c.journal("localaid.service", output="cat")
    assert len(re.findall(r"kill-restart ollama.service: ok cause=\"wedged runner\" evidence=", journal)) == 1, journal[-2000:]
    # Healthy again: a new runner, the model warm, answering.
    wait_for(lambda: healthy(c) and "1 model warm" in status(c), timeout=60, interval=0.5,
             message=lambda: f"healthy again (last: {status(c)!r})")
    healed = time.monotonic() - last_work
    assert runner(c)[0] != before_pid
    assert generate(c, c.model, "again", timeout=30).get("response") == "fake answer"
    print(f"wedged runner: healthy and answering {healed:.1f} s after its last work")
    assert hung and "error" in hung[0] or not hung  # the wedged request ended with the restart, not an answer
