"""The leading seconds of a video, cut without re-encoding, in memory.

Evaluation only: labelled attack clips run up to half a minute, and the service refuses
anything over `VideoLimits.max_duration_s`. An attacker would submit a clip of the allowed
length, so the evaluation judges what the service would: the first seconds of each clip,
as the service's own decoder then samples them.
"""

from __future__ import annotations

import io

import av

from portrait.media.video import open_video


def leading(data: bytes, seconds: float) -> bytes:
    """The video packets shown wholly within the first `seconds` (audio dropped), remuxed
    into an MP4.
    The cut falls between packets, so the last group of pictures may lose frames that
    refer past it; the decoder skips those as it would in a truncated upload."""
    buffer = io.BytesIO()
    with open_video(data) as (source, stream):
        with av.open(buffer, "w", format="mp4") as out:
            copy = out.add_stream_from_template(stream)
            for packet in source.demux(stream):
                if packet.dts is None or packet.pts is None:
                    continue
                end = packet.pts + (packet.duration or 0) - (stream.start_time or 0)
                if float(end * stream.time_base) > seconds:
                    continue
                packet.stream = copy
                out.mux(packet)
    return buffer.getvalue()
