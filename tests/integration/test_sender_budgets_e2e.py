"""Three senders of one group share an SMS budget of 50/s; one is SIGKILLed midway (issue 18).

Three `nudgeflow sender` processes start in one group with `--budget SMS=50/s@10` (stored in
Redis under the test's key prefix; every admission runs the GCRA script there). Once the group
has given each of them partitions, a backlog of ``TRIGGERS`` triggers across P0-P3 is produced
to the test's own tier topics: a fifth of them SMS, the rest EMAIL and PUSH, with deadlines
by tier (P0 generous, P3 tight, so some P3 and P2 SMS cannot make theirs at 50/s). Once
``KILL_AFTER_SMS`` SMS were delivered, the sender that delivered most is killed with SIGKILL;
its partitions move to the others after `--session-timeout`.

Scaled down from the issue's 20,000 triggers to ``TRIGGERS`` (3,000, of which 600 SMS) so the
test runs in about a minute in CI: the SMS budget, not the backlog size, sets the duration;
``NUDGEFLOW_TEST_TRIGGERS=20000`` runs the issue's size.

Checked: every trigger is delivered or expired (none lost); none is handled twice, except
triggers of the killed sender's last batch (the documented at-least-once window); every P0 is
delivered before its deadline; the SMS send rate, measured from the adapter's own clock in
every sliding one-second window and from the group's admission counters in Redis per second,
never exceeds the budget by more than one bucket (50 + 10); the on-time rate per tier is
printed and each survivor's report carries the KPI table.
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import redis

from jobs.config import as_flags
from tests.integration.test_sender_e2e import produce_transactions, trigger_record
from tests.integration.test_sender_group import wait_until_each_owns_partitions
from tests.unit.test_sender import make_trigger
from udfs.campaigns.grammar import TIERS
from udfs.stores import keys

pytestmark = pytest.mark.integration

# the issue asks for 20,000; CI runs 3,000 to keep the test near a minute, and
# NUDGEFLOW_TEST_TRIGGERS=20000 runs the full size by hand (about 2 minutes here)
TRIGGERS = int(os.environ.get("NUDGEFLOW_TEST_TRIGGERS", "3000"))
SMS_EVERY = 5  # one trigger in five is an SMS: 600
BUDGET_PER_S, BURST = 50, 10
BATCH = 20
KILL_AFTER_SMS = 150
SEND_DELAY_S = 0.002  # a channel that takes 2 ms per message
DEADLINE_S = {"P0": 120, "P1": 60, "P2": 15, "P3": 6}  # from production


class TimingAdapter:
    """Prints ``sent|expired <id> <tier> <channel> <epoch ms> <expires_at>`` per trigger."""

    def __init__(self):
        self.delay_s = float(os.environ.get("NUDGEFLOW_TEST_SEND_DELAY_S", "0"))

    def _say(self, what, trigger):
        print(f"{what} {trigger['trigger_id']} {trigger['tier']} {trigger['channel']} "
              f"{time.time_ns() // 1_000_000} {trigger['expires_at']}", flush=True)

    def send(self, trigger):
        if trigger["channel"] != "SMS":
            time.sleep(self.delay_s)
        self._say("sent", trigger)

    def expired(self, trigger):
        self._say("expired", trigger)


def events(text):
    """[(kind, trigger id, tier, channel, ms, expires_at)] in the order printed."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] in ("sent", "expired"):
            found.append((parts[0], parts[1], parts[2], parts[3], int(parts[4]), int(parts[5])))
    return found


def start_sender(cfg, group, out):
    cmd = [sys.executable, "-m", "jobs.cli", "sender", *as_flags(cfg), "--group", group,
           "--adapter", f"{__name__}:TimingAdapter", "--batch-size", str(BATCH),
           "--budget", f"SMS={BUDGET_PER_S}/s@{BURST}",
           "--session-timeout", "6", "--until-idle", "8", "--report-every", "5",
           "--dedupe-ttl", "600"]
    env = {**os.environ, "NUDGEFLOW_TEST_SEND_DELAY_S": str(SEND_DELAY_S)}
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)


def max_in_window(times_ms, window_ms=1000):
    """The most timestamps in any half-open window [t, t + window_ms)."""
    times = sorted(times_ms)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window_ms:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_three_senders_share_an_sms_budget_by_priority_and_deadline(isolated_cfg, tmp_path):
    cfg = isolated_cfg
    group = f"{cfg.consumer_group}-sender"
    paths = [tmp_path / f"sender-{n}.out" for n in range(3)]
    procs = []
    for path in paths:
        with open(path, "w") as out:
            procs.append(start_sender(cfg, group, out))
    client = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
    try:
        wait_until_each_owns_partitions(paths, procs)

        now = time.time_ns() // 1_000_000
        records, expected = [], {}
        for i in range(TRIGGERS):
            tier = TIERS[i % len(TIERS)]
            channel = "SMS" if i % SMS_EVERY == 0 else ("EMAIL", "PUSH")[i % 2]
            trigger = make_trigger(f"t-{i:05d}", tier=tier, user_id=f"u-{i % 101}",
                                   channel=channel,
                                   expires_at=now + DEADLINE_S[tier] * 1000 + i)
            trigger["emit_time"] = now
            records.append(trigger_record(cfg, trigger))
            expected[trigger["trigger_id"]] = trigger
        produce_transactions(cfg, [(records[i:i + 500], True) for i in range(0, TRIGGERS, 500)])

        victim = None
        deadline = time.monotonic() + 90
        while victim is None and time.monotonic() < deadline:
            sms = [sum(e[0] == "sent" and e[3] == "SMS" for e in events(path.read_text()))
                   for path in paths]
            if sum(sms) >= KILL_AFTER_SMS:
                victim = max(range(3), key=lambda n: sms[n])
            else:
                assert all(p.poll() is None for p in procs), "a sender exited before the kill"
                time.sleep(0.05)
        assert victim is not None, f"{KILL_AFTER_SMS} SMS were not delivered within 90 s"
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(timeout=10)
        survivors = [n for n in range(3) if n != victim]
        for n in survivors:
            procs[n].wait(timeout=150)
        used = client.hgetall(keys.budget_used(cfg.redis_key_prefix, group, "SMS"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        client.delete(keys.budgets(cfg.redis_key_prefix, group))
        client.close()

    texts = [path.read_text() for path in paths]
    assert procs[victim].returncode == -signal.SIGKILL
    for n in survivors:
        assert procs[n].returncode == 0, texts[n][-3000:]
        assert "(stopped: idle)" in texts[n], texts[n][-3000:]
        # the table's rows per tier; a survivor holds only some partitions of each tier topic
        # (the group balances partitions over all four topics), so it may have sent no P0 SMS
        assert "delivery KPIs" in texts[n] and "P0/*" in texts[n], texts[n][-3000:]

    per_sender = [events(text) for text in texts]
    handled = Counter(e[1] for evs in per_sender for e in evs)
    assert set(handled) == set(expected), f"lost: {sorted(set(expected) - set(handled))[:20]}"
    # repeats only from the killed sender's last batch (handled, killed before it was recorded)
    killed_last = {e[1] for e in per_sender[victim][-BATCH:]}
    twice = {t for t, n in handled.items() if n > 1}
    assert twice <= killed_last, sorted(twice - killed_last)
    survived = Counter(e[1] for n in survivors for e in per_sender[n])
    assert max(survived.values()) == 1, "the survivors handled a trigger twice"

    first = {}
    for evs in per_sender:
        for e in evs:
            first.setdefault(e[1], e)
    p0 = [e for e in first.values() if e[2] == "P0"]
    assert all(e[0] == "sent" and e[4] <= e[5] for e in p0), \
        [e for e in p0 if e[0] != "sent" or e[4] > e[5]][:10]

    sms_times = [e[4] for evs in per_sender for e in evs if e[0] == "sent" and e[3] == "SMS"]
    per_second = Counter(t // 1000 for t in sms_times)
    window_max = max_in_window(sms_times)
    redis_max = max(int(v) for v in used.values())
    bound = BUDGET_PER_S + BURST
    print(f"\nkilled sender {victim}; {len(twice)} trigger(s) of its last batch handled again")
    print(f"SMS sent: {len(sms_times)}; max per calendar second {max(per_second.values())}, "
          f"in any sliding second {window_max}, admitted per Redis second {redis_max} "
          f"(budget {BUDGET_PER_S}/s, bucket {BURST})")
    for tier in TIERS:
        mine = [e for e in first.values() if e[2] == tier]
        on_time = sum(e[0] == "sent" and e[4] <= e[5] for e in mine)
        sms = [e for e in mine if e[3] == "SMS"]
        sms_on_time = sum(e[0] == "sent" and e[4] <= e[5] for e in sms)
        print(f"{tier}: on time {on_time / len(mine):.1%} of {len(mine)} "
              f"(SMS {sms_on_time / len(sms):.1%} of {len(sms)}), "
              f"expired {sum(e[0] == 'expired' for e in mine)}")
    assert redis_max <= bound
    assert max(per_second.values()) <= bound
    assert window_max <= bound
