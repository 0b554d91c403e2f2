"""Video files to the frame folders lib/data/video.py reads (image_00001.jpg, ...), for extract_frames.py and the
videos bench_video_data.py generates."""
import os

import cv2

from lib.data.video_reader import FRAME_PATTERN


def write_frames(video, folder, quality=95, short_side=0):
    """Every frame OpenCV decodes from `video` as JPEG (quality 1-100) in the existing `folder`, the shorter side
    resized to short_side (0: as decoded); returns how many were written."""
    capture = cv2.VideoCapture(video)
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if short_side:
            height, width = frame.shape[:2]
            factor = short_side / min(height, width)
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
        count += 1
        cv2.imwrite(os.path.join(folder, FRAME_PATTERN.format(count) + ".jpg"), frame,
                    [cv2.IMWRITE_JPEG_QUALITY, quality])
    capture.release()
    return count
