"""Draw the abstract shape pictures: benign pictures of nothing in particular, for tensor training only.

    python scripts/build_shape_pictures.py

Each picture is 64x64 RGBA on a transparent background (training composites its own backgrounds, as for the
emoji sets): one to four random shapes (ellipses, boxes, polygons, strokes) in random colours, with or without dark
outlines (no spiky stars: in red and yellow they look like the collision emoji, a harmful concept). A security
tensor that meets harmful pictures in only a few drawing styles can learn to refuse whatever looks unfamiliar;
requests about these pictures, answered as the base model answers them, tell it that a picture it does not
recognise is no reason to refuse. They show no concept, so no test uses them. The drawings are generated here
(seeded: re-runs give byte-identical files) and share the project's licence.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "assets" / "shapes"
COUNT, SIZE, SEED = 256, 64, 2507
SCALE = 4  # drawn at 4x and scaled down, for smooth edges


def _colour(rng: random.Random) -> tuple[int, int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256), 255


def draw_shapes(rng: random.Random) -> Image.Image:
    """One picture of one to four random shapes."""
    side = SIZE * SCALE
    picture = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(picture)
    for _ in range(rng.randint(1, 4)):
        cx, cy = rng.uniform(0.25, 0.75) * side, rng.uniform(0.25, 0.75) * side
        w, h = rng.uniform(0.15, 0.45) * side, rng.uniform(0.15, 0.45) * side
        box = (cx - w, cy - h, cx + w, cy + h)
        outline = (rng.randrange(60),) * 3 + (255,) if rng.random() < 0.5 else None
        width = rng.randint(2, 4) * SCALE
        kind = rng.choice(("ellipse", "box", "polygon", "stroke"))
        if kind == "ellipse":
            draw.ellipse(box, fill=_colour(rng), outline=outline, width=width)
        elif kind == "box":
            draw.rounded_rectangle(box, radius=rng.uniform(0, min(w, h) * 0.5), fill=_colour(rng), outline=outline,
                                   width=width)
        elif kind == "polygon":
            corners = rng.randint(3, 7)
            turn = rng.uniform(0, 2 * math.pi)
            angles = [turn + 2 * math.pi * k / corners for k in range(corners)]
            points = [(cx + w * math.cos(angle), cy + h * math.sin(angle)) for angle in angles]
            draw.polygon(points, fill=_colour(rng), outline=outline, width=width)
        else:
            points = [(rng.uniform(0.1, 0.9) * side, rng.uniform(0.1, 0.9) * side) for _ in range(rng.randint(2, 4))]
            draw.line(points, fill=_colour(rng), width=rng.randint(3, 8) * SCALE, joint="curve")
    return picture.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def main() -> None:
    shutil.rmtree(OUT_DIR / "pictures", ignore_errors=True)
    (OUT_DIR / "pictures").mkdir(parents=True)
    rng = random.Random(SEED)
    for index in range(COUNT):
        picture = draw_shapes(rng)
        clean = Image.frombytes("RGBA", picture.size, picture.tobytes())  # pixel data only, no metadata
        clean.save(OUT_DIR / "pictures" / f"shapes_{index:03d}.png", format="PNG", optimize=True)
    print(f"{COUNT} pictures in {(OUT_DIR / 'pictures').relative_to(REPO)}")


if __name__ == "__main__":
    main()
