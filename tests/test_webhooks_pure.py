"""Webhook tokens and the safety net's schedule: pure functions, no network."""
from __future__ import annotations

import random

import anyio
import pytest

from batcher.errors import UsageError
from batcher.models import HAPPYHORSE_R2V
from batcher.policy import PollPlanner, RenderSeed, WebhookTally, next_safety_poll, silent_done
from batcher.run.pokes import PokeBoard
from batcher.run.webhooks import Webhooks, check_public_url, job_url, key_of, make_secret, token_for, webhook_field

KEY = "0123456789abcdef0123"


def test_a_job_url_names_its_key_and_a_token_only_the_secret_makes():
    secret = make_secret()
    url = job_url("https://public.example/hooks/", secret, "b", KEY)
    assert url.startswith(f"https://public.example/hooks/{KEY}/")
    path = url.removeprefix("https://public.example")
    assert key_of(path, secret, "b") == KEY
    # behind a proxy that strips its prefix, the last two segments still do
    assert key_of(path.removeprefix("/hooks"), secret, "b") == KEY
    assert key_of(path, make_secret(), "b") is None  # another batch's secret
    assert key_of(path, secret, "other-batch") is None  # another batch's name
    other = "f" * 20
    assert key_of(f"/hooks/{other}/{token_for(secret, 'b', KEY)}", secret, "b") is None  # token of another key
    token = token_for(secret, "b", KEY)
    flipped = ("0" if token[0] != "0" else "1") + token[1:]
    assert key_of(f"/hooks/{KEY}/{flipped}", secret, "b") is None


@pytest.mark.parametrize("path", ["", "/", "/x", f"/{KEY}", f"/{KEY}/", f"/{KEY}/zz", f"/{KEY.upper()}/{'a' * 32}",
                                  f"/../{KEY}/{'a' * 33}", "/" + "a" * 5000])
def test_malformed_paths_name_no_job(path):
    assert key_of(path, make_secret(), "b") is None


def test_secrets_differ_and_are_long():
    a, b = make_secret(), make_secret()
    assert a != b and len(a) == 64


@pytest.mark.parametrize("url", ["ftp://x.example/h", "/relative", "https://user:pw@x.example/h",
                                 "https://x.example/h?q=1", "https://x.example/h#f", "https://x.example/a b",
                                 "https://x.example:99999/h", "https://" + "a" * 1600 + ".example/"])
def test_bad_public_urls_are_one_line_usage_errors(url):
    with pytest.raises(UsageError) as e:
        check_public_url(url)
    assert "\n" not in str(e.value) and "pw" not in str(e.value)


def test_the_listen_address_is_the_default_base():
    assert Webhooks("127.0.0.1", 0).base(8787) == "http://127.0.0.1:8787/hooks"
    assert Webhooks("::1", 0).base(1) == "http://[::1]:1/hooks"
    assert Webhooks("0.0.0.0", 8787, "https://p.example/h/").base(8787) == "https://p.example/h"


def test_the_field_is_webhook_url_unless_the_live_schema_names_it():
    assert webhook_field(HAPPYHORSE_R2V) == "webhook_url"
    from dataclasses import replace

    from batcher.models import Param
    camel = replace(HAPPYHORSE_R2V, params=(*HAPPYHORSE_R2V.params, Param("webhook_url", "webhookUrl", "string")))
    assert webhook_field(camel) == "webhookUrl"


# --- the safety net ---------------------------------------------------------------------------

def test_an_unannounced_job_is_more_likely_done_and_silent_as_time_passes():
    qs = [silent_done(t, 1.0, 0.2, 0.1) for t in (0.5, 1.0, 1.4, 2.0)]
    assert qs == sorted(qs) and qs[0] < 0.01 and qs[-1] > 0.9
    assert silent_done(5.0, 1.0, 0.2, 1.0) == pytest.approx(1.0)
    assert silent_done(1.0, 1.0, 0.2, 0.0) == 0.0


def simulate(lost_rate: float, believed: float, n: int = 3000) -> tuple[float, float]:
    """(status requests per job, mean detection delay) of the safety net on N(1, 0.2) renders whose
    webhooks arrive 20 ms after the end unless lost."""
    rng = random.Random(7)
    gets, delay = 0, 0.0
    for _ in range(n):
        end = max(0.0, rng.gauss(1.0, 0.2))
        poke = None if rng.random() < lost_rate else end + 0.02
        t = 0.0
        while True:
            t = next_safety_poll(t, 1.02, 0.2, believed, 0.12)
            gets += 1
            if poke is not None and poke <= t:
                delay += poke - end
                break
            if t >= end:
                delay += t - end
                break
    return gets / n, delay / n


def test_webhooks_that_arrive_leave_about_one_request_per_job():
    gets, delay = simulate(0.0, 0.002)
    assert gets < 1.1 and delay < 0.03


def test_lost_webhooks_make_safety_polls_denser_and_still_beat_polling():
    sparse_gets, _ = simulate(0.2, 0.002)
    gets, delay = simulate(0.2, 0.2)
    assert gets > sparse_gets  # believing the loss, it polls more ...
    assert delay < 0.07  # ... and detects sooner than the polling schedule's 0.077 s on these renders


def test_with_every_webhook_lost_it_polls_like_polling_mode():
    gets, delay = simulate(1.0, 1.0)
    assert 1.5 < gets < 3.0 and delay < 0.12


def test_past_every_render_seen_safety_polls_back_off():
    late = [next_safety_poll(t, 1.0, 0.2, 0.5, 0.12) - t for t in (2.0, 4.0, 8.0)]
    assert late == sorted(late) and late[-1] > late[0]
    assert next_safety_poll(100.0, 1.0, 0.2, 0.5, 0.12) - 100.0 <= 60.0


def test_with_nothing_learned_the_guess_decides():
    guessing = PollPlanner(guesses={"m": 10.0})
    assert guessing.safety_poll(("m", 5, "720p"), 0.0, 0.01) > 10.0  # after the guessed end, not before
    learned = PollPlanner(guesses={"m": 99.0})
    learned.seed({("m", 5, "720p"): RenderSeed(10.0, 2.0, 50)})
    assert learned.safety_poll(("m", 5, "720p"), 0.0, 0.01) < 30.0  # learned times win over the guess


def test_the_tally_starts_doubtful_and_learns():
    tally = WebhookTally()
    assert 0.02 < tally.lost < 0.2
    for _ in range(200):
        tally.record(announced=True)
    assert tally.lost < 0.01
    for _ in range(200):
        tally.record(announced=False)
    assert tally.lost > 0.45


# --- the poke board ---------------------------------------------------------------------------

def test_a_poke_wakes_its_follower_and_only_it():
    async def main() -> tuple[bool, bool]:
        board = PokeBoard()
        woke: dict[str, bool] = {}

        async def follow(key: str) -> None:
            woke[key] = await board.wait(key, 5.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, "a")
            tg.start_soon(follow, "b")
            await anyio.sleep(0.05)
            board.poke("a")
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        return woke.get("a", False), woke.get("b", False)
    a, b = anyio.run(main)
    assert a is True and b is False


def test_a_poke_before_anyone_waits_is_kept_once():
    async def main() -> tuple[bool, bool]:
        board = PokeBoard()
        board.poke("k")
        return await board.wait("k", 0.01), await board.wait("k", 0.01)
    assert anyio.run(main) == (True, False)


def test_early_pokes_are_bounded_and_expire():
    now = [0.0]
    board = PokeBoard(clock=lambda: now[0])
    for i in range(10_050):
        board.poke(f"k{i}")
    assert not board.take_early("k0") and board.take_early("k10049")
    board.poke("old")
    now[0] += 601
    assert not board.take_early("old")


def test_a_webhook_that_comes_after_a_poll_found_its_job_is_late_not_lost():
    tally = WebhookTally()
    for _ in range(40):
        tally.record(announced=True)
    for i in range(10):
        tally.record(announced=False, key=f"k{i}")
    doubted = tally.lost
    assert [tally.came(f"k{i}") for i in range(8)] == [True] * 8  # their webhooks came after all
    assert not tally.came("k0") and not tally.came("never-found")  # once each, and only those found
    assert tally.late == 8 and tally.missed == 10 and tally.lost < doubted / 3
    assert not tally.silent


def test_a_tally_keeps_a_bounded_memory_of_jobs_found_first():
    from batcher.policy.safetynet import FOUND_KEPT
    tally = WebhookTally()
    for i in range(FOUND_KEPT + 5):
        tally.record(announced=False, key=f"k{i}")
    assert not tally.came("k0") and tally.came(f"k{FOUND_KEPT + 4}")  # the oldest forgotten first
    assert tally.silent is False  # a late webhook came: the path works
