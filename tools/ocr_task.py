"""A real OCR task for the benchmarks: RapidOCR's PP-OCRv4 text detector + recogniser (ONNX, PyPI).

``rapidocr_onnxruntime`` ships paddle2onnx exports of PP-OCRv4 (detector 1.2 M weights, recogniser 2.7 M,
every weight a ``Constant`` node, no initializer). The task renders lines of real English text (the
docstrings of standard-library modules) in the DejaVu fonts onto plain backgrounds, runs the whole
pipeline (detection, crops, recognition) with the original models and with decoded weights, and scores
the character agreement of the recognised text with the original models' text: ``1 - edit distance /
length`` summed over the images, whitespace removed (the recogniser's spaces flip between equally likely
readings on the slightest change; they are not what a user reads off an OCR result).

    from ocr_task import OcrTask
    task = OcrTask(n_images=12)                   # None when rapidocr_onnxruntime is not installed
    task.weights                                  # {"det/<name>": array, "rec/<name>": array}
    task.agreement(decoded)                       # run the pipeline with decoded weights
"""

from __future__ import annotations

import inspect
import random
import re
import tempfile
from pathlib import Path

import numpy as np

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def available() -> str:
    """Empty string when the task can run, else why not."""
    try:
        import rapidocr_onnxruntime  # noqa: F401
        from PIL import ImageFont  # noqa: F401
        from rapidfuzz.distance import Levenshtein  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install rapidocr_onnxruntime rapidfuzz)"
    if not list(FONT_DIR.glob("DejaVu*.ttf")):
        return f"no DejaVu fonts in {FONT_DIR}"
    return ""


def _words() -> list[str]:
    import argparse
    import collections
    import email
    import functools
    import http.client
    import itertools
    import json
    import pathlib
    import textwrap

    words: list[str] = []
    for m in (json, collections, argparse, pathlib, functools, itertools, textwrap, email, http.client):
        words += (inspect.getdoc(m) or "").split()
    return [w for w in words if w.isprintable()]


def text_images(count: int, seed: int) -> list[np.ndarray]:
    """``count`` 640x360 BGR images of 5-9 text lines each (18-34 px, random DejaVu font and colours)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    words = _words()
    fonts = sorted(FONT_DIR.glob("DejaVu*.ttf"))
    images = []
    for _ in range(count):
        width, height = 640, 360
        im = Image.new("RGB", (width, height), tuple(rng.randint(215, 255) for _ in range(3)))
        draw = ImageDraw.Draw(im)
        y = 10
        while y < height - 50:
            size = rng.randint(18, 34)
            font = ImageFont.truetype(str(rng.choice(fonts)), size)
            k = rng.randint(0, len(words) - 12)
            line = " ".join(words[k:k + rng.randint(3, 7)])
            while draw.textlength(line, font=font) > width - 30 and " " in line:
                line = line.rsplit(" ", 1)[0]
            draw.text((rng.randint(5, 20), y), line, fill=tuple(rng.randint(0, 70) for _ in range(3)), font=font)
            y += int(size * rng.uniform(1.5, 2.2))
        images.append(np.array(im)[:, :, ::-1].copy())
    return images


class OcrTask:
    """The detector and recogniser, their float weights, evaluation images and the reference text."""

    def __init__(self, n_images: int = 12, seed: int = 1):
        import onnx
        import rapidocr_onnxruntime as ro
        from onnx import numpy_helper

        from rdformat.onnx import structural_values
        from rdformat.onnx_calibration import _FLOAT_TYPES, _constants_as_initializers

        models = Path(ro.__file__).parent / "models"
        self.paths = {"det": models / "ch_PP-OCRv4_det_infer.onnx", "rec": models / "ch_PP-OCRv4_rec_infer.onnx"}
        loaded = {k: onnx.load(str(p)) for k, p in self.paths.items()}
        # float tensors that steer shapes (Resize scales...) are not weights: they stay exact, for every method
        # (rdformat.onnx keeps them lossless; NNCodec would round them and the detector would not load)
        structural = {k: structural_values(m) for k, m in loaded.items()}
        # the models as the calibration code sees them (Constant weights as initializers), to write variants of
        self.models = {k: _constants_as_initializers(m) for k, m in loaded.items()}
        self.weights = {f"{k}/{t.name}": numpy_helper.to_array(t) for k, m in self.models.items()
                        for t in m.graph.initializer if t.data_type in _FLOAT_TYPES and t.name not in structural[k]}
        self.images = text_images(n_images, seed)
        self._tmp = tempfile.TemporaryDirectory()
        self.reference = self._read(self.paths)
        self.characters = sum(len(t) for t in self.reference)

    def _read(self, paths: dict) -> list[str]:
        import rapidocr_onnxruntime as ro

        engine = ro.RapidOCR(det_model_path=str(paths["det"]), rec_model_path=str(paths["rec"]))
        out = []
        for im in self.images:
            res, _ = engine(im, use_cls=False)
            out.append("".join(re.sub(r"\s+", "", r[1]) for r in sorted(res or [], key=lambda r: (r[0][0][1], r[0][0][0]))))
        return out

    def write_models(self, decoded: dict, folder: Path) -> dict:
        """ONNX files of both models with their float weights replaced by ``decoded`` (missing: original)."""
        from onnx import numpy_helper

        paths = {}
        for k, model in self.models.items():
            variant = type(model)()
            variant.CopyFrom(model)
            for t in variant.graph.initializer:
                v = decoded.get(f"{k}/{t.name}")
                if v is not None:
                    t.CopyFrom(numpy_helper.from_array(np.asarray(v).astype(self.weights[f"{k}/{t.name}"].dtype), t.name))
            paths[k] = folder / f"{k}.onnx"
            paths[k].write_bytes(variant.SerializeToString())
        return paths

    def agreement(self, decoded: dict) -> float:
        """Character agreement (whitespace removed) of the pipeline with ``decoded`` weights."""
        from rapidfuzz.distance import Levenshtein

        hyp = self._read(self.write_models(decoded, Path(self._tmp.name)))
        edits = sum(Levenshtein.distance(r, h) for r, h in zip(self.reference, hyp))
        return 1.0 - edits / max(1, self.characters)

    def calibration_inputs(self, count: int, seed: int = 2) -> dict:
        """What each model is fed on ``count`` other text images: {"det": [feeds], "rec": [feeds]} (the
        recogniser's crops padded to 48x320 as the pipeline pads them)."""
        import onnxruntime as ort

        seen = {"det": [], "rec": []}
        original = ort.InferenceSession.run

        def record(session, output_names, feed, *a, **kw):
            x = feed.get("x")
            if x is not None:
                seen["rec" if x.shape[2] == 48 else "det"].append(np.array(x))
            return original(session, output_names, feed, *a, **kw)

        keep = self.images
        ort.InferenceSession.run = record
        try:
            self.images = text_images(count, seed)
            self._read(self.paths)
        finally:
            ort.InferenceSession.run = original
            self.images = keep
        crops = []
        for batch in seen["rec"]:
            for x in batch:
                y = np.zeros((3, 48, 320), np.float32)
                y[:, :, :min(x.shape[2], 320)] = x[:, :, :320]
                crops.append(y)
        return {"det": [{"x": x} for x in seen["det"]], "rec": [{"x": np.stack(crops[:64])}]}
