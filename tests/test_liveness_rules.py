"""Active-liveness rules on synthetic signals: what counts as a blink, a head move or a mouth
opening, how a challenge is judged and drawn, and what a recording can answer."""

from __future__ import annotations

import numpy as np
import pytest

from portrait import genuine
from portrait.action_scoring import Span, match_clip, summarise
from portrait.challenge import (
    BLINK, DRAWN_ACTIONS, FIRST_PROMPT_S, MAX_RECORD_S, MOVES, PROMPT_GAP_S, WINDOW_S, ChallengeSpec, all_schedules,
    draw, random_challenge, record_after, sequences,
)
from portrait.stages.liveness import (
    ActionEvent, Hysteresis, LivenessThresholds, answer_rate, best_crafted_rate, blinks, count_answered,
    head_moves, judge, mouth_openings, observe, rest_level,
)

FPS = 15.0
# Thresholds for these tests, not the shipped ones: the rules, not the calibration, are tested.
LIMITS = LivenessThresholds(
    turn=Hysteresis(15.0, 8.0, 0.3), tilt=Hysteresis(15.0, 8.0, 0.3), look=Hysteresis(10.0, 5.0, 0.3),
    mouth=Hysteresis(0.4, 0.25, 0.4), look_max_yaw=20.0, rest_band=3.0, closed_ratio=0.5, reopened_ratio=0.75,
    max_blink_s=0.6, max_pitch_shift=12.0)


def _times(seconds=4.0):
    return np.arange(0, seconds, 1 / FPS)


def _pose(times, yaw=0.0, pitch=0.0, roll=0.0):
    pose = np.zeros((len(times), 3))
    pose[:] = (yaw, pitch, roll)
    return pose


def _moves(pose, times, mirrored=False):
    return [(e.action, round(e.start_s, 2)) for e in head_moves(pose, times, LIMITS, mirrored)]


def test_a_quick_closure_that_reopens_is_a_blink():
    times = _times()
    openness = np.full((len(times), 2), 0.3)
    openness[30:33] = 0.05
    (event,) = blinks(openness, np.zeros(len(times)), times, LIMITS)
    assert event.action == "blink" and abs(event.start_s - 2.0) < 1e-6


def test_a_blink_that_half_opens_on_the_way_is_one_blink():
    times = _times()
    openness = np.full((len(times), 2), 0.3)
    openness[30:33], openness[33], openness[34:36] = 0.05, 0.18, 0.05  # back to 60 %, under the reopened level
    assert len(blinks(openness, np.zeros(len(times)), times, LIMITS)) == 1


@pytest.mark.parametrize("change", ["squint", "shut", "glance_down", "one_eye"])
def test_what_is_not_a_blink(change):
    times = _times()
    openness, pitch = np.full((len(times), 2), 0.3), np.zeros(len(times))
    if change == "squint":
        openness[20:50] = 0.17  # narrowed for two seconds, never closed
    elif change == "shut":
        openness[20:45] = 0.04  # closed for 1.7 s
    elif change == "glance_down":
        openness[30:34] = 0.08
        pitch[28:36] = -25.0  # the lids drop because the head and eyes look down
    else:
        openness[30:33, 0] = 0.05
    assert blinks(openness, pitch, times, LIMITS) == []


def test_turns_read_yaw_sign_and_mirroring():
    times = _times()
    pose = _pose(times)
    pose[10:20, 0], pose[40:50, 0] = 25.0, -25.0
    assert [a for a, _ in _moves(pose, times)] == ["turn_left", "turn_right"]
    assert [a for a, _ in _moves(pose, times, mirrored=True)] == ["turn_right", "turn_left"]


def test_tilts_read_roll_sign_and_mirroring():
    times = _times()
    pose = _pose(times)
    pose[10:20, 2], pose[40:50, 2] = 25.0, -25.0
    assert [a for a, _ in _moves(pose, times)] == ["tilt_left", "tilt_right"]
    assert [a for a, _ in _moves(pose, times, mirrored=True)] == ["tilt_right", "tilt_left"]


def test_moves_are_measured_from_the_pose_the_clip_holds():
    """A camera held to one side, or below the face: the held pose is rest, not a move."""
    times = _times()
    pose = _pose(times, yaw=18.0, pitch=-12.0)
    pose[20:28, 1] = 3.0
    assert _moves(pose, times) == [("look_up", round(times[20], 2))]


def test_rest_is_the_pose_most_frames_hold_when_a_move_fills_much_of_the_clip():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 50), rng.normal(-12, 1, 40)])
    assert abs(rest_level(values, 3.0)) < 0.5
    assert np.median(values) < -0.8  # the median is pulled toward the move


def test_a_single_noisy_frame_is_not_an_action():
    times = _times()
    pose = _pose(times)
    pose[10, 0] = 30.0
    assert _moves(pose, times) == []


def test_one_turn_that_wobbles_back_across_the_threshold_counts_once():
    """The split turn: a person turns right once and holds it; the measured yaw dips under the
    entry threshold mid-turn (landmark noise, a blink), but not back to rest."""
    times = _times(6.0)
    pose = _pose(times)
    pose[15:22, 0], pose[22:25, 0], pose[25:32, 0] = -20.0, -11.0, -20.0
    openness = np.full((len(times), 2), 0.3)
    openness[23:25] = 0.05  # the subject blinks while turned
    events = observe(openness, pose, np.zeros(len(times)), times, LIMITS)
    assert [e.action for e in events] == ["turn_right", "blink"]
    assert events[0].start_s == times[15] and events[0].end_s == times[31]
    pose[22:25, 0] = 0.0  # back to rest between: two turns
    assert [a for a, _ in _moves(pose, times)] == ["turn_right", "turn_right"]


def test_a_slow_turn_starts_where_the_head_starts_moving():
    times = _times(4.0)
    pose = _pose(times)
    pose[15:30, 0] = np.linspace(1.0, 25.0, 15)  # 1 s from rest to 25 degrees
    pose[30:40, 0] = 25.0
    ((action, start),) = _moves(pose, times)
    assert action == "turn_left" and start <= times[15] + 0.15  # not where it passes 8 or 15 degrees (1.5 s, 1.9 s)


def test_pitch_is_not_judged_while_the_head_is_turned_far():
    """The spurious look: during a large left turn the pitch measurement rises although the
    head does not move up; with the head back to rest, the same rise is a look."""
    times = _times(5.0)
    pose = _pose(times)
    pose[15:45, 0] = 35.0  # a held left turn
    pose[20:40, 1] = 14.0  # pitch reads high during it
    assert _moves(pose, times) == [("turn_left", round(times[15], 2))]
    level = _pose(times)
    level[20:40, 1] = 14.0
    assert _moves(level, times) == [("look_up", round(times[20], 2))]


def test_a_look_that_began_before_a_turn_continues_through_it():
    times = _times(5.0)
    pose = _pose(times)
    pose[10:50, 1] = -14.0  # head bowed
    pose[25:35, 0] = 35.0  # turns left meanwhile: pitch unknown there
    assert [a for a, _ in _moves(pose, times)] == ["look_down", "turn_left"]


def test_a_wide_open_mouth_held_is_an_action_and_speech_is_not():
    times = _times()
    mouth = np.full(len(times), 0.02)
    mouth[5:9] = 0.50  # as wide, for 0.27 s, in speech
    mouth[30:42] = 0.55  # opened wide for 0.8 s
    (event,) = mouth_openings(mouth, times, LIMITS)
    assert event.action == "open_mouth" and abs(event.start_s - 2.0) < 1e-6


def _event(action, start):
    return ActionEvent(action, start, start + 0.4, 1.0)


SEEN = [_event("blink", 0.5), _event("turn_left", 1.6), _event("blink", 2.9), _event("open_mouth", 3.8),
        _event("blink", 6.0)]
ASKED = ChallengeSpec.timed(["turn_left", "blink", "open_mouth"], [1.0, 2.5, 3.2])


def test_exactly_the_asked_actions_in_their_windows_answer_the_challenge():
    verdict = judge(ASKED, SEEN, duration_s=ASKED.record_s)
    assert verdict.reason is None and verdict.missing == [] and verdict.unrequested == []


def test_natural_blinks_are_tolerated_but_a_head_move_is_not():
    extra = sorted([*SEEN, _event("look_down", 5.5)], key=lambda e: e.start_s)
    verdict = judge(ASKED, extra, duration_s=ASKED.record_s)
    assert verdict.reason == "unrequested_action" and [e.action for e in verdict.unrequested] == ["look_down"]
    twice = sorted([*SEEN, _event("turn_left", 5.5)], key=lambda e: e.start_s)  # asked once, done twice
    verdict = judge(ASKED, twice, ASKED.record_s)
    assert verdict.reason == "unrequested_action" and [(e.action, e.start_s) for e in verdict.unrequested] == [
        ("turn_left", 5.5)]


def test_wrong_order_missing_and_wrong_times_are_refused():
    swapped = ChallengeSpec.timed(["open_mouth", "blink", "turn_left"], [1.0, 2.5, 3.2])
    assert judge(swapped, SEEN, swapped.record_s).reason == "unrequested_action"
    more = ChallengeSpec.timed(["turn_left", "blink", "open_mouth", "look_up"], [1.0, 2.5, 3.2, 5.0])
    verdict = judge(more, SEEN, more.record_s)
    assert verdict.reason == "challenge_incomplete" and verdict.missing == ["look_up"]
    late = ChallengeSpec.timed(ASKED.actions, [2.0, 3.5, 4.5])  # the turn began before its prompt
    assert judge(late, SEEN, late.record_s).reason == "action_out_of_window"
    slow = ChallengeSpec.timed(ASKED.actions, [1.0, 1.5, 1.6])  # the mouth opened 2.2 s after its prompt
    assert judge(slow, SEEN, slow.record_s).reason is None
    slower = ChallengeSpec.timed(ASKED.actions, [1.0, 1.4, 1.45])  # ... and here 2.35 s after
    assert judge(slower, SEEN, slower.record_s).reason == "action_out_of_window"


def test_a_requested_blink_must_fall_in_its_window():
    no_blink_then = [e for e in SEEN if not (e.action == "blink" and e.start_s == 2.9)]
    # the only blinks left are at 0.5 s (before the turn) and 6.0 s (after the mouth)
    assert judge(ASKED, no_blink_then, ASKED.record_s).reason == "action_out_of_window"


def test_a_recording_of_another_length_is_refused():
    assert judge(ASKED, SEEN, ASKED.record_s + 0.3).reason is None
    assert judge(ASKED, SEEN, ASKED.record_s - 0.3).reason is None
    assert judge(ASKED, SEEN, ASKED.record_s + 2.0).reason == "recording_too_long"
    assert judge(ASKED, SEEN, ASKED.record_s - 1.0).reason == "recording_too_short"


def test_untimed_challenges_check_order_only():
    assert judge(ChallengeSpec(("turn_left", "open_mouth")), SEEN, 30.0).reason is None
    assert judge(ChallengeSpec(("open_mouth", "turn_left")), SEEN, 30.0).reason == "unrequested_action"


def test_server_draws_follow_the_rules():
    index, schedules = draw(np.random.default_rng(3), 50_000)
    table = sequences()
    assert len(table) == len(MOVES) * (len(MOVES) - 1) ** (DRAWN_ACTIONS - 1)
    assert len(np.unique(index)) > 0.99 * len(table)  # the draw reaches (nearly) every sequence
    assert BLINK not in {a for i in index[:2000] for a in table[i]}  # no challenge leans on a blink
    assert all(a != b for i in index[:2000] for a, b in zip(table[i], table[i][1:]))
    assert schedules.shape == (50_000, DRAWN_ACTIONS)
    first, gaps = schedules[:, 0], np.diff(schedules, axis=1)
    assert first.min() >= FIRST_PROMPT_S[0] and first.max() <= FIRST_PROMPT_S[1] + 1e-9
    assert gaps.min() >= PROMPT_GAP_S[0] - 1e-9 and gaps.max() <= PROMPT_GAP_S[1] + 1e-9
    assert record_after(schedules.T).max() <= MAX_RECORD_S + 1e-9
    assert len(all_schedules()) == len(np.unique(all_schedules(), axis=0))
    one = random_challenge()
    assert one.actions in table and one.record_s <= MAX_RECORD_S


def test_the_exact_chance_of_a_recording_agrees_with_the_draws():
    """A recording made for one sequence, its moves late in their windows: its exact chance
    over every schedule, against the share of 400,000 drawn challenges it answers."""
    sequence = sequences()[1234]
    timed = all_schedules()
    starts = timed.mean(0) + 1.2
    made = [ActionEvent(a, float(t), float(t) + 0.5, 20.0) for a, t in zip(sequence, starts)]
    duration = float(timed.mean(0)[-1] + WINDOW_S[1] + 0.5)
    exact = answer_rate(made, duration)
    assert 0 < exact <= 1 / len(sequences())
    index, schedules = draw(np.random.default_rng(7), 400_000)
    index[:200_000] = 1234  # half the draws ask for this sequence, so its schedules are counted well
    counted = count_answered(made, duration, index[:200_000], schedules[:200_000]) / 200_000
    assert abs(counted - exact * len(sequences())) < 0.01
    assert count_answered(made, duration, index[200_000:], schedules[200_000:]) <= 200_000 * exact * 3 + 5
    assert answer_rate(made[:-1], duration) == 0.0  # four moves answer no five-move challenge


def test_the_best_crafted_recording_answers_at_most_one_in_ten_thousand():
    best = best_crafted_rate()
    assert 0 < best["rate"] <= 1e-4
    timed = all_schedules()
    starts = np.array(best["starts_s"])
    assert np.all(np.diff(starts) > 0) and starts[0] >= timed[:, 0].min() + WINDOW_S[0]


def test_slower_customers_fail_more_often():
    customers = genuine.Customers({"turn": np.array([0.6, 0.8, 1.0]), "open_mouth": np.array([0.8, 1.2])},
                                  np.array([-0.1, 0.0, 0.1]), {a: 0.3 for a in MOVES})
    quick = genuine.success_rate(customers, 20_000, np.random.default_rng(1))
    slow = genuine.success_rate(genuine.Customers(customers.durations, customers.onset_errors, customers.min_held_s,
                                                  1.3, 0.4), 20_000, np.random.default_rng(1))
    assert quick["accepted"] > slow["accepted"] and slow["failures"]["started_too_late"] > 0


def test_observed_actions_are_scored_against_annotations():
    annotated = [Span("turn_left", 1.0, 2.0), Span("turn_left", 3.0, 3.5), Span("open_mouth", 5.0, 6.0),
                 Span("blink", 7.0, 7.1), Span("blink", 7.4, 7.5)]
    observed = [Span("turn_left", 1.1, 1.4), Span("turn_left", 1.6, 2.0),  # one turn seen as two
                Span("open_mouth", 5.2, 6.1), Span("look_up", 8.0, 9.0),  # an extra look
                Span("blink", 7.0, 7.5)]  # two blinks seen as one
    result = match_clip(annotated, observed)
    assert result["turn_left"] | {"onset_errors_s": []} == {
        "annotated": 2, "found_once": 0, "missed": 1, "split": 1, "merged": 0, "extra": 0, "onset_errors_s": []}
    assert result["open_mouth"]["found_once"] == 1 and result["open_mouth"]["onset_errors_s"] == [0.2]
    assert result["look_up"]["extra"] == 1
    assert (result["blink"]["found_once"], result["blink"]["merged"]) == (1, 1)
    table = summarise({"clip": result})
    assert table["turn_left"]["recall"] == 0.5 and table["open_mouth"]["onset_abs_max_s"] == 0.2


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
