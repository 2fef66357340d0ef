"""The 68 iBUG face landmarks: which indices are which part of the face.

Every package stores its landmarks in this order (docs/package-format.md,
``landmarks.npy``), whichever backend placed them, so every module that picks
points out of them takes its index sets from here. "Left" and "right" are the
subject's: the subject's right eye is on the image's left.

The sets are slices (a view when indexing ``(..., 68, 2)`` arrays); pairs and
single points are tuples of ints.
"""

from __future__ import annotations

N_POINTS = 68

JAW = slice(0, 17)                  # 0-16, right ear to left ear along the chin (chin tip 8)
RIGHT_BROW = slice(17, 22)          # 17-21
LEFT_BROW = slice(22, 27)           # 22-26
NOSE = slice(27, 36)                # bridge 27-30 (tip 30), base 31-35
NOSE_BASE = slice(31, 36)           # 31-35, along the bottom of the nose
RIGHT_EYE = slice(36, 42)           # 36-41, outer corner 36
LEFT_EYE = slice(42, 48)            # 42-47, outer corner 45
LIPS = slice(48, 68)                # outer and inner lip contours: 20 points
OUTER_LIPS = slice(48, 60)          # 48-59, mouth corners 48 and 54
INNER_LIPS = slice(60, 68)          # 60-67

STABLE = slice(27, 48)              # nose and eyes: they do not move with the mouth, so faces are aligned on them
EYE_CORNERS = (36, 45)              # outer eye corners: their distance is the face's scale
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))   # upper and lower inner lip, facing: their gaps open the mouth
