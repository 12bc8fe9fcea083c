"""Build the picture set: every concept of sectensor/concepts.py in every drawing style, as a 64x64 RGBA PNG.

The styles of `TENSOR_TRAINING_STYLES` hold only the concepts their emoji set has (EmojiOne 2.2 predates five);
`EVALUATION_STYLES` (OpenMoji) hold every concept, for test manifests only.

Run from the repository root:

    python scripts/build_images.py

It needs
  * npm on the PATH, with access to the npm registry (the emoji sets are downloaded from there),
  * the Cairo library (`apt-get install -y libcairo2`) and `pip install cairosvg` for the SVG styles
    (build-time only; cairosvg is deliberately not in requirements.txt),
  * Pillow (a project dependency).

The pinned packages are fetched with `npm pack` into a temporary folder. The script writes
assets/images/<style>/<slug>.png and assets/images/manifest.json, replacing what was there, and fails
if any concept cannot be found in any style. PNGs keep their transparency (training composites its own
backgrounds) and are re-encoded without metadata, so re-runs give byte-identical files.
Attribution for the artwork is in assets/images/LICENSES.md.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cairosvg
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sectensor.concepts import CONCEPTS, EVALUATION_STYLES, STYLES, TENSOR_TRAINING_STYLES, Concept  # noqa: E402

OUT_DIR = REPO / "assets" / "images"
SIZE = 64


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    licence: str  # licence of the artwork (the datasource packages' own "MIT" covers only their code)

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


NOTO = Package("emoji-datasource-google", "16.0.0", "Apache-2.0")
TWEMOJI = Package("emoji-datasource-twitter", "16.0.0", "CC-BY-4.0")
FLUENT = Package("fluentui-emoji", "1.3.0", "MIT")
EMOJIONE = Package("emojione", "2.2.7", "CC-BY-4.0")
OPENMOJI = Package("openmoji", "17.0.0", "CC-BY-SA-4.0")

# style -> (package, where in the package the pictures are)
SOURCES: dict[str, tuple[Package, str]] = {
    "noto": (NOTO, "img/google/64"),
    "twemoji": (TWEMOJI, "img/twitter/64"),
    "fluent_flat": (FLUENT, "icons/flat"),
    "fluent_modern": (FLUENT, "icons/modern"),
}
assert tuple(SOURCES) == STYLES, "SOURCES must cover exactly the styles of sectensor.concepts.STYLES"
# Styles drawn where their set has the concept (files named after the lower-case code point).
PARTIAL_SOURCES: dict[str, tuple[Package, str]] = {"emojione": (EMOJIONE, "assets/png")}
assert tuple(PARTIAL_SOURCES) == TENSOR_TRAINING_STYLES
# Styles for test manifests only, one SVG per code point (files named after the upper-case code point).
EVALUATION_SOURCES: dict[str, tuple[Package, str]] = {"openmoji": (OPENMOJI, "color/svg")}
assert tuple(EVALUATION_SOURCES) == EVALUATION_STYLES

# Fluent files are named after the current CLDR short name; these are the concepts whose name differs from it.
CLDR_NAMES: dict[str, str] = {
    "1F52B": "water pistol",
    "1F375": "teacup without handle",
}


def download(package: Package, into: Path) -> Path:
    """Fetch a package tarball from the npm registry, unpack it and return its root folder."""
    result = subprocess.run(
        ["npm", "pack", package.spec, "--json", "--pack-destination", str(into)],
        check=True, capture_output=True, text=True, cwd=into,
    )
    tarball = into / json.loads(result.stdout)[0]["filename"]
    root = into / package.name
    with tarfile.open(tarball) as archive:
        archive.extractall(root, filter="data")
    tarball.unlink()
    return root / "package"


def datasource_file(emoji_json: list[dict], concept: Concept, folder: str, has_image_field: str) -> str:
    """Path, inside an emoji-datasource package, of the picture of a concept's code point.

    Matches on the base code point, so "2694" finds the entry unified as "2694-FE0F".
    """
    matches = [
        entry for entry in emoji_json
        if entry["unified"].replace("-FE0F", "") == concept.codepoint and entry[has_image_field]
    ]
    if len(matches) != 1:
        raise LookupError(f"{concept.name} (U+{concept.codepoint}): {len(matches)} pictures in {folder}")
    return f"{folder}/{matches[0]['image']}"


def fluent_file(package_root: Path, concept: Concept, folder: str) -> str:
    """Path, inside fluentui-emoji, of a concept's SVG; skin-toned emoji use the default (yellow) tone."""
    stem = CLDR_NAMES.get(concept.codepoint, concept.name).replace(" ", "-")
    for candidate in (f"{folder}/{stem}.svg", f"{folder}/{stem}-default.svg"):
        if (package_root / candidate).is_file():
            return candidate
    raise LookupError(f"{concept.name} (U+{concept.codepoint}): no {stem}.svg in {folder}")


def load_picture(path: Path) -> Image.Image:
    """A SIZE x SIZE RGBA picture from a PNG or SVG file."""
    if path.suffix == ".svg":
        png = cairosvg.svg2png(url=str(path), output_width=SIZE, output_height=SIZE)
        picture = Image.open(io.BytesIO(png))
    else:
        picture = Image.open(path)
    picture = picture.convert("RGBA")
    if picture.size != (SIZE, SIZE):
        picture = picture.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return picture


def save_png(picture: Image.Image, path: Path) -> None:
    """Write a PNG with pixel data only (no text chunks, timestamps or colour profiles)."""
    clean = Image.frombytes("RGBA", picture.size, picture.tobytes())
    clean.save(path, format="PNG", optimize=True)


def main() -> None:
    manifest: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        roots = {package: download(package, Path(tmp)) for package in (NOTO, TWEMOJI, FLUENT, EMOJIONE, OPENMOJI)}
        emoji_json = {package: json.loads((roots[package] / "emoji.json").read_text()) for package in (NOTO, TWEMOJI)}
        has_image_field = {NOTO: "has_img_google", TWEMOJI: "has_img_twitter"}

        for style, (package, folder) in {**SOURCES, **PARTIAL_SOURCES, **EVALUATION_SOURCES}.items():
            style_dir = OUT_DIR / style
            shutil.rmtree(style_dir, ignore_errors=True)
            style_dir.mkdir(parents=True)
            for concept in CONCEPTS:
                if style in PARTIAL_SOURCES:
                    source_file = f"{folder}/{concept.codepoint.lower()}.png"
                    if not (roots[package] / source_file).is_file():
                        continue
                elif style in EVALUATION_SOURCES:
                    source_file = f"{folder}/{concept.codepoint}.svg"
                elif package is FLUENT:
                    source_file = fluent_file(roots[package], concept, folder)
                else:
                    source_file = datasource_file(emoji_json[package], concept, folder, has_image_field[package])
                target = style_dir / f"{concept.slug}.png"
                save_png(load_picture(roots[package] / source_file), target)
                manifest.append({
                    "concept": concept.name,
                    "group": concept.group,
                    "harmful": concept.harmful,
                    "style": style,
                    "path": target.relative_to(REPO).as_posix(),
                    "source_package": package.spec,
                    "source_file": source_file,
                    "licence": package.licence,
                })

    (OUT_DIR / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    partial = sum(entry["style"] in PARTIAL_SOURCES for entry in manifest)
    print(f"{len(manifest)} pictures ({len(CONCEPTS)} concepts x {len(STYLES) + len(EVALUATION_SOURCES)} styles, "
          f"and {partial} in {', '.join(PARTIAL_SOURCES)}) in {OUT_DIR.relative_to(REPO)}")


if __name__ == "__main__":
    main()
