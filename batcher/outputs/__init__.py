"""The videos folder: what batcher writes there and what it finds there.

    files       file names, temporary files, publishing without replacing, verification
    media       what a downloaded video really is (MP4 header: duration, frame size)
    wholeness   whether a video's bytes are a whole MP4 video, checked as they stream past
    bucket      the output store: clips in a bucket the user owns (--out s3://BUCKET/PREFIX)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .files import (
        OUTPUTS,
        default_out_dir,
        file_sha256,
        matches,
        process_alive,
        publish,
        sweep_temp_files,
        temp_name,
        video_name,
    )
    from .media import VideoInfo, expected_frame, mismatches, probe

__getattr__ = lazy(__name__)

__all__ = [
    "OUTPUTS", "VideoInfo", "default_out_dir", "expected_frame", "file_sha256", "matches", "mismatches", "probe",
    "process_alive", "publish", "sweep_temp_files", "temp_name", "video_name",
]
