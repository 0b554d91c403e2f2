"""Clip sampling (which frames) and spatial transforms (which pixels) of the 3D-ResNets recipe.

Source of the numbers: Hara et al.'s 3D-ResNets-PyTorch (github.com/kenshohara/3D-ResNets-PyTorch): clips of
`sample_duration` 16 frames at `sample_size` 112 (opts.py); training crops `train_crop corner` with `n_scales` 5,
`initial_scale` 1 and `scale_step` 0.84089641525 = 2^-1/4 (opts.py of the 2017-2019 versions, class
MultiScaleCornerCrop in spatial_transforms.py: a square of side scale x the short side, at the centre or a corner);
temporal random crop with loop padding and centre crop for validation (temporal_transforms.py); means and
standard deviations per channel (mean.py, see NORMALIZATIONS).

The training crop's kind is a choice (TrainClip's train_crop, --train-crop): 'corner' (default, the recipe's),
'center' (3D-ResNets' option of that name: multi-scale, always centred) or 'random' (multi-scale at a uniformly
drawn position, 3D-ResNets' 'random'). The corner crop can cut a small subject out of the clip; the other two trade
that for less (centre) or more (random) positional variety.

Randomness: a training clip draws its numbers from torch's default CPU generator, for a given train_crop always
the same ones in the same order and before any frame is decoded (temporal offset, scale, position, flip), so with
lib.data.samplers.SeededAugmentation a clip is a function of (seed, epoch, index) whatever the video, the number
of workers or a wrong container frame count.
"""
import math

import cv2
import numpy as np
import torch

# (mean, std) per RGB channel in pixel units (0-255), from mean.py of 3D-ResNets-PyTorch. 'kinetics': its current
# version's Kinetics statistics (get_mean_std: mean 0.4345 0.4051 0.3775, std 0.2768 0.2713 0.2737 on 0-1 pixels)
# and its default (mean_dataset kinetics, mean and std normalization), the input of its current models.
# 'activitynet': its 2017 version's default (mean_dataset activitynet, norm_value 1, no std_norm): raw 0-255 pixels
# minus the ActivityNet mean 114.7748 107.7354 99.4750; the input its resnet-*-kinetics.pth checkpoints were
# trained on.
NORMALIZATIONS = {
    "kinetics": (tuple(255 * m for m in (0.4345, 0.4051, 0.3775)), tuple(255 * s for s in (0.2768, 0.2713, 0.2737))),
    "activitynet": ((114.7748, 107.7354, 99.4750), (1.0, 1.0, 1.0)),
}
DEFAULT_NORMALIZATION = "kinetics"
# 1, 2^-1/4, 2^-1/2, 2^-3/4, 1/2 of the short side.
CROP_SCALES = tuple(2 ** (-k / 4) for k in range(5))
# centre first, then the four corners (top-left, top-right, bottom-left, bottom-right).
CROP_POSITIONS = ("c", "tl", "tr", "bl", "br")
TRAIN_CROPS = ("corner", "center", "random")


def clip_span(clip_len, frame_step):
    """Frames a clip covers: clip_len frames taken every frame_step frames."""
    return (clip_len - 1) * frame_step + 1


def clip_indices(num_frames, start, clip_len, frame_step):
    """Indices start, start + step, ... of one clip; frames past the end are replaced by looping over the ones
    taken so far (3D-ResNets' LoopPadding), so a short video gives e.g. 0 1 2 0 1 2 0 ..."""
    taken = list(range(start, min(num_frames, start + clip_span(clip_len, frame_step)), frame_step))
    return [taken[k % len(taken)] for k in range(clip_len)]


def random_start(num_frames, clip_len, frame_step, u):
    """Start of a training clip for a uniform draw u in [0, 1): every start that keeps the clip inside the video
    is equally likely (0 when the video is shorter than a clip). 3D-ResNets' TemporalRandomCrop never picks the
    last one (its randint bound is one short); here it is as likely as the others."""
    choices = max(1, num_frames - clip_span(clip_len, frame_step) + 1)
    return min(int(u * choices), choices - 1)


def center_start(num_frames, clip_len, frame_step):
    """Start of the clip centred in the video (validation): half a clip before the middle frame, as 3D-ResNets'
    TemporalCenterCrop."""
    return max(0, num_frames // 2 - clip_span(clip_len, frame_step) // 2)


def even_starts(num_frames, clip_len, frame_step, count):
    """Starts of `count` clips spread evenly from the first to the last full clip (the multi-clip test); with a
    video shorter than a clip they all start at 0 (identical, loop-padded clips)."""
    last = max(0, num_frames - clip_span(clip_len, frame_step))
    if count == 1:
        return [last // 2]
    return [round(k * last / (count - 1)) for k in range(count)]


def crop_box(height, width, scale, position):
    """(top, left, side) of the square of side int(scale x short side) at `position`: c, tl, tr, bl, br, or
    (v, h) in [0, 1)^2 for a free position (v: how far down, h: how far right, every pixel offset as likely)."""
    side = max(1, int(min(height, width) * scale))
    if not isinstance(position, str):
        v, h = position
        top, left = int(v * (height - side + 1)), int(h * (width - side + 1))
        return min(top, height - side), min(left, width - side), side
    top = {"c": (height - side) // 2, "tl": 0, "tr": 0, "bl": height - side, "br": height - side}[position]
    left = {"c": (width - side) // 2, "tl": 0, "tr": width - side, "bl": 0, "br": width - side}[position]
    return top, left, side


def crop_resize(frames, box, size):
    """uint8 frames (T, H, W, 3) cropped to box = (top, left, side) and resized to (T, size, size, 3).

    Shrinking averages pixel areas (cv2.INTER_AREA, no aliasing, as PIL's bilinear resize that 3D-ResNets used),
    enlarging is bilinear; the same box for every frame of the clip.
    """
    top, left, side = box
    crops = frames[:, top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(crops)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(crop, (size, size), interpolation=interpolation) for crop in crops])


def _lookup_tables(normalization):
    """float32 (3, 256): the normalized value of every uint8 pixel value, per channel (computed in float64)."""
    mean, std = (np.asarray(v, dtype=np.float64)[:, None] for v in NORMALIZATIONS[normalization])
    return ((np.arange(256)[None, :] - mean) / std).astype(np.float32)


_TABLES = {name: _lookup_tables(name) for name in NORMALIZATIONS}


def to_normalized_tensor(frames, normalization=DEFAULT_NORMALIZATION):
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W), (pixel - mean) / std per channel (pixel units 0-255).

    By table lookup: twice as fast as converting and normalizing the array, and rounded once."""
    table = _TABLES[normalization]
    return torch.from_numpy(np.stack([table[c][frames[..., c]] for c in range(3)]))


class TrainClip:
    """The training transform: random temporal crop, multi-scale crop, horizontal flip, normalization.

    train_crop: where the square of a scale drawn from `scales` lies: 'corner' (default: the centre or a corner,
    drawn), 'center' (always the centre; the position is still drawn, so that the other draws match 'corner's) or
    'random' (a uniformly drawn position: two uniform numbers in place of the corner's one). hflip: probability of
    a horizontal flip. A mirror turns "moving left" into "moving right" and clockwise into counter-clockwise: for
    classes defined by direction use 0. The flip is drawn even when hflip is 0, so the other draws do not shift.
    """

    def __init__(self, clip_len=16, frame_step=1, size=112, hflip=0.5, scales=CROP_SCALES,
                 normalization=DEFAULT_NORMALIZATION, train_crop="corner"):
        self.clip_len, self.frame_step, self.size = clip_len, frame_step, size
        self.hflip, self.scales, self.normalization = hflip, tuple(scales), normalization
        self.train_crop = train_crop

    def draw(self):
        """The random choices of one clip, from torch's default generator: (u, scale, position, flip)."""
        u = torch.rand(()).item()
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        if self.train_crop == "random":
            position = (torch.rand(()).item(), torch.rand(()).item())
        else:
            position = CROP_POSITIONS[int(torch.randint(len(CROP_POSITIONS), ()))]
            position = "c" if self.train_crop == "center" else position
        flip = torch.rand(()).item() < self.hflip
        return u, scale, position, flip

    def indices(self, num_frames, u):
        return clip_indices(num_frames, random_start(num_frames, self.clip_len, self.frame_step, u),
                            self.clip_len, self.frame_step)

    def pixels(self, frames, scale, position, flip):
        """uint8 frames (T, H, W, 3) of the chosen indices -> the normalized clip (3, T, size, size)."""
        out = crop_resize(frames, crop_box(frames.shape[1], frames.shape[2], scale, position), self.size)
        if flip:
            out = out[:, :, ::-1]
        return to_normalized_tensor(out, self.normalization)


class EvalClips:
    """Deterministic clips: the centre clip (count None, validation) or `count` evenly spaced clips (test), each
    the centred square of the short side resized to `size`."""

    def __init__(self, clip_len=16, frame_step=1, size=112, count=None, normalization=DEFAULT_NORMALIZATION):
        self.clip_len, self.frame_step, self.size = clip_len, frame_step, size
        self.count, self.normalization = count, normalization

    def indices(self, num_frames):
        """[clip indices] (count None) or [[clip indices] x count]."""
        if self.count is None:
            return clip_indices(num_frames, center_start(num_frames, self.clip_len, self.frame_step),
                                self.clip_len, self.frame_step)
        return [clip_indices(num_frames, start, self.clip_len, self.frame_step)
                for start in even_starts(num_frames, self.clip_len, self.frame_step, self.count)]

    def pixels(self, frames):
        """uint8 (T, H, W, 3) -> (3, T, size, size), or (count, T, H, W, 3) -> (count, 3, T, size, size)."""
        if self.count is None:
            return self._centre(frames)
        return torch.stack([self._centre(clip) for clip in frames])

    def _centre(self, frames):
        box = crop_box(frames.shape[1], frames.shape[2], 1.0, "c")
        return to_normalized_tensor(crop_resize(frames, box, self.size), self.normalization)


def video_scores(clip_logits):
    """Video-level class probabilities: the softmax of each clip's logits, averaged over the clips.

    clip_logits (..., clips, classes) -> (..., classes); e.g. (test_clips, C) -> (C,), (B, test_clips, C) ->
    (B, C). Computed in float32 at least (half-precision logits are upcast).
    """
    logits = clip_logits if clip_logits.dtype == torch.float64 else clip_logits.float()
    return torch.softmax(logits, dim=-1).mean(dim=-2)


def check_clip_options(clip_len, frame_step, frame_size, hflip, test_clips):
    """Messages for out-of-range clip options (an empty list when all are fine)."""
    problems = []
    for name, value in (("clip_len", clip_len), ("frame_step", frame_step), ("frame_size", frame_size),
                        ("test_clips", test_clips)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            problems.append(f"{name} must be a positive integer, got {value!r}")
    if not 0 <= hflip <= 1 or math.isnan(hflip):
        problems.append(f"hflip is a probability in [0, 1], got {hflip}")
    return problems


def check_train_crop(train_crop, scales):
    """Messages for a bad training crop kind or scales (an empty list when both are fine)."""
    problems = []
    if train_crop not in TRAIN_CROPS:
        problems.append(f"train_crop is one of {', '.join(TRAIN_CROPS)}, got {train_crop!r}")
    try:
        bad = not scales or any(not 0 < float(s) <= 1 for s in scales)
    except (TypeError, ValueError):
        bad = True
    if bad:
        problems.append(f"crop_scales are fractions of the short side in (0, 1], at least one, got {scales!r}")
    return problems
