"""Camera frame -> policy image, exactly as pick-101 prepares its observations:
centre crop to a square (or a configured box), then ``cv2.INTER_AREA`` resize to the policy
size, RGB, uint8. Used live by the camera node and the sim driver, and by bag ingest.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CropResize:
    """Crop box ``(x, y, width, height)`` in source pixels (``None``: centre square), then
    resize to ``size x size`` with area interpolation."""

    size: int = 84
    box: tuple[int, int, int, int] | None = None

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        if self.box is None:
            side = min(height, width)
            return (width - side) // 2, (height - side) // 2, side, side
        x, y, w, h = self.box
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
            raise ValueError(f"crop box {self.box} does not fit a {width}x{height} image")
        return x, y, w, h

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (size, size, 3) uint8, C-contiguous."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"need an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
        x, y, w, h = self.crop_box(image.shape[0], image.shape[1])
        crop = image[y : y + h, x : x + w]
        if crop.shape[0] == self.size and crop.shape[1] == self.size:
            return np.ascontiguousarray(crop)
        return cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
