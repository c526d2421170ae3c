"""Active-liveness rules on synthetic signals: what counts as a blink or a head move."""

from __future__ import annotations

import numpy as np

from portrait.stages.liveness import ActionEvent, blinks, head_moves, unmet

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


def test_required_actions_in_order_or_as_a_set():
    seen = [ActionEvent("turn_right", 1.0, 1.2, 20), ActionEvent("blink", 2.0, 2.1, 0.1),
            ActionEvent("turn_left", 3.0, 3.4, 20)]
    assert unmet(["turn_left", "blink", "turn_right"], seen, ordered=False) == []
    assert unmet(["turn_right", "blink", "turn_left"], seen, ordered=True) == []
    assert unmet(["turn_left", "blink"], seen, ordered=True) == ["blink"]
    assert unmet(["look_up"], seen, ordered=False) == ["look_up"]
