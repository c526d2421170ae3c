"""Active-liveness rules on synthetic signals: what counts as a blink or a head move."""

from __future__ import annotations

import numpy as np
import pytest

from portrait.challenge import (
    FIRST_PROMPT_S, MAX_ACTIONS, MAX_RECORD_S, MIN_ACTIONS, PROMPT_GAP_S, ChallengeSpec, draw, random_challenge,
    record_after, sequences,
)
from portrait.stages.liveness import (
    ActionEvent, blinks, count_answered, head_moves, judge, mouth_openings, observe,
)

FPS = 15.0


def _series(seconds=4.0):
    times = np.arange(0, seconds, 1 / FPS)
    return times, np.full((len(times), 2), 0.3), np.zeros(len(times))


def test_a_quick_closure_that_reopens_is_a_blink():
    times, openness, pitch = _series()
    openness[30:33] = 0.05
    (event,) = blinks(openness, pitch, times)
    assert event.action == "blink" and abs(event.start_s - 2.0) < 1e-6


def test_a_squint_is_not_a_blink():
    times, openness, pitch = _series()
    openness[20:50] = 0.17  # narrowed for two seconds, never closed
    assert blinks(openness, pitch, times) == []


def test_eyes_kept_shut_are_not_a_blink():
    times, openness, pitch = _series()
    openness[20:45] = 0.04  # closed for 1.7 s
    assert blinks(openness, pitch, times) == []


def test_a_glance_down_is_not_a_blink():
    times, openness, pitch = _series()
    openness[30:34] = 0.08
    pitch[28:36] = -25.0  # the lids drop because the head and eyes look down
    assert blinks(openness, pitch, times) == []


def test_one_eye_closing_is_not_a_blink():
    times, openness, pitch = _series()
    openness[30:33, 0] = 0.05
    assert blinks(openness, pitch, times) == []


def test_turns_read_yaw_sign_and_mirroring():
    times, _, pitch = _series()
    yaw = np.zeros(len(times))
    yaw[10:20], yaw[40:50] = 20.0, -20.0
    assert [e.action for e in head_moves(yaw, pitch, times)] == ["turn_left", "turn_right"]
    assert [e.action for e in head_moves(yaw, pitch, times, mirrored=True)] == ["turn_right", "turn_left"]


def test_looks_are_relative_to_the_clip_pitch():
    times, _, _ = _series()
    pitch = np.full(len(times), -12.0)  # camera below the face
    pitch[20:28] = 3.0
    assert [e.action for e in head_moves(np.zeros(len(times)), pitch, times)] == ["look_up"]


def test_a_single_noisy_frame_is_not_an_action():
    times, _, pitch = _series()
    yaw = np.zeros(len(times))
    yaw[10] = 30.0
    assert head_moves(yaw, pitch, times) == []


def test_a_wide_open_mouth_is_an_action_and_speech_is_not():
    times = np.arange(0, 4.0, 1 / FPS)
    mouth = np.full(len(times), 0.02)
    mouth[5:9] = 0.40  # speech-sized openings
    mouth[30:42] = 0.55  # opened wide for 0.8 s
    (event,) = mouth_openings(mouth, times)
    assert event.action == "open_mouth" and abs(event.start_s - 2.0) < 1e-6


def test_one_action_split_by_a_wobble_counts_once():
    times, openness, pitch = _series(6.0)
    yaw = np.zeros(len(times))
    yaw[15:22], yaw[25:32] = 20.0, 20.0  # dips below the threshold for 0.2 s mid-turn
    openness[24:26] = 0.05  # and the subject blinks while turned
    angles = np.stack([yaw, pitch], 1)
    events = observe(openness, angles, np.zeros(len(times)), times)
    assert [e.action for e in events] == ["turn_left", "blink"]
    assert events[0].start_s == times[15] and events[0].end_s == times[31]


def _event(action, start):
    return ActionEvent(action, start, start + 0.4, 1.0)


SEEN = [_event("blink", 0.5), _event("turn_left", 1.6), _event("blink", 2.9), _event("open_mouth", 4.1),
        _event("blink", 6.0)]
ASKED = ChallengeSpec.timed(["turn_left", "blink", "open_mouth"], [1.0, 2.5, 3.5])


def test_exactly_the_asked_actions_in_their_windows_answer_the_challenge():
    verdict = judge(ASKED, SEEN, duration_s=ASKED.record_s)
    assert verdict.reason is None and verdict.missing == [] and verdict.unrequested == []


def test_natural_blinks_are_tolerated_but_a_head_move_is_not():
    extra = sorted([*SEEN, _event("look_down", 5.5)], key=lambda e: e.start_s)
    verdict = judge(ASKED, extra, duration_s=7.0)
    assert verdict.reason == "unrequested_action" and [e.action for e in verdict.unrequested] == ["look_down"]
    twice = sorted([*SEEN, _event("turn_left", 5.5)], key=lambda e: e.start_s)  # asked once, done twice
    verdict = judge(ASKED, twice, 7.0)
    assert verdict.reason == "unrequested_action" and [(e.action, e.start_s) for e in verdict.unrequested] == [
        ("turn_left", 5.5)]


def test_wrong_order_missing_and_wrong_times_are_refused():
    swapped = ChallengeSpec.timed(["open_mouth", "blink", "turn_left"], [1.0, 2.5, 3.5])
    assert judge(swapped, SEEN, 7.0).reason == "unrequested_action"
    more = ChallengeSpec.timed(["turn_left", "blink", "open_mouth", "look_up"], [1.0, 2.5, 3.5, 5.0])
    verdict = judge(more, SEEN, 8.0)
    assert verdict.reason == "challenge_incomplete" and verdict.missing == ["look_up"]
    late = ChallengeSpec.timed(ASKED.actions, [2.0, 3.5, 4.5])  # the turn began before its prompt
    assert judge(late, SEEN, 7.0).reason == "action_out_of_window"
    early = ChallengeSpec.timed(ASKED.actions, [0.2, 1.0, 1.2])  # the mouth opened 2.9 s after its prompt
    assert judge(early, SEEN, 4.2).reason is None
    earlier = ChallengeSpec.timed(ASKED.actions, [0.2, 0.5, 0.8])  # ... and here 3.3 s after
    assert judge(earlier, SEEN, 4.2).reason == "action_out_of_window"


def test_a_requested_blink_must_fall_in_its_window():
    no_blink_then = [e for e in SEEN if not (e.action == "blink" and e.start_s == 2.9)]
    # the only blinks left are at 0.5 s (before the turn) and 6.0 s (after the mouth)
    assert judge(ASKED, no_blink_then, 7.0).reason == "action_out_of_window"


def test_a_recording_that_runs_on_past_its_end_is_refused():
    assert judge(ASKED, SEEN, ASKED.record_s + 0.4).reason is None
    assert judge(ASKED, SEEN, ASKED.record_s + 2.0).reason == "recording_too_long"


def test_untimed_challenges_check_order_only():
    assert judge(ChallengeSpec(("turn_left", "open_mouth")), SEEN, 30.0).reason is None
    assert judge(ChallengeSpec(("open_mouth", "turn_left")), SEEN, 30.0).reason == "unrequested_action"


def test_server_draws_follow_the_rules():
    index, schedules = draw(np.random.default_rng(3), 50_000)
    table = sequences()
    assert len(table) == 6 * 5 + 6 * 5**2 + 6 * 5**3
    assert len(np.unique(index)) == len(table)  # every sequence is drawn
    lengths = np.array([len(table[i]) for i in index])
    assert set(lengths) == {MIN_ACTIONS, 3, MAX_ACTIONS}
    assert all(a != b for i in index[:2000] for a, b in zip(table[i], table[i][1:]))
    assert np.array_equal(np.isnan(schedules).sum(1), MAX_ACTIONS - lengths)
    first, gaps = schedules[:, 0], np.diff(schedules, axis=1)
    assert first.min() >= FIRST_PROMPT_S[0] and first.max() <= FIRST_PROMPT_S[1] + 1e-9
    assert np.nanmin(gaps) >= PROMPT_GAP_S[0] - 1e-9 and np.nanmax(gaps) <= PROMPT_GAP_S[1] + 1e-9
    assert np.nanmax(record_after(np.nan_to_num(schedules).max(1)[None])) <= MAX_RECORD_S
    one = random_challenge()
    assert one.actions in table and one.record_s <= MAX_RECORD_S


def test_the_simulation_counts_what_a_recording_answers():
    """A recording made for one drawn challenge answers it, and few others."""
    index, schedules = draw(np.random.default_rng(5), 20_000)
    actions = sequences()[index[0]]
    made = [_event(a, float(s) + 1.0) for a, s in zip(actions, schedules[0])]
    answered = count_answered(made, float(record_after(schedules[0, : len(actions)])), index, schedules)
    assert 1 <= answered < 200
    assert count_answered([], 5.0, index, schedules) == 0


def test_cli_require_and_schedule_make_the_challenge():
    from portrait.cli import _asked, build_parser

    def asked(*argv):
        return _asked(build_parser().parse_args(["verify", "--id-image", "a.jpg", "--video", "v.mp4", *argv]))

    assert asked() is None
    assert asked("--require", "blink,turn_left") == ChallengeSpec(("blink", "turn_left"))
    timed = asked("--require", "blink,turn_left", "--schedule", "1.0,3.0", "--mirrored")
    assert timed == ChallengeSpec.timed(["blink", "turn_left"], [1.0, 3.0], mirrored=True)
    for bad in (["--schedule", "1.0"], ["--require", "blink,blink"], ["--require", "blink", "--schedule", "1,2"]):
        with pytest.raises(ValueError):
            asked(*bad)
