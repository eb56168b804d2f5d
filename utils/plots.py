"""Figures drawn with Pillow (a torchvision dependency, so no plotting library is needed): the confusion matrix
and the grid of mistaken images of test.py's report, and the loss curve of tune.py's LR range test."""
from __future__ import annotations

import io
import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

WHITE, BLACK, GREY, BLUE, RED = (255, 255, 255), (0, 0, 0), (150, 150, 150), (31, 119, 180), (214, 39, 40)
DARK = (8, 48, 107)  # the far end of the confusion matrix's colour scale (a row's whole share)
LABELLED_CLASSES = 40  # above this many classes the matrix is drawn as colours only, without counts and names


def font(size: int = 13) -> ImageFont.ImageFont:
    """Pillow's built-in font at `size` px (a fixed small bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def text_size(text: str, face: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = face.getbbox(text)
    return right - left, bottom


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG file content, to be written atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scale_to_unit(images: torch.Tensor) -> torch.Tensor:
    """A batch of images (N, C, H, W) scaled to 0..1 for display, each by its own minimum and maximum: the
    inputs are normalised for the model, and their original scale is not known here."""
    images = images.detach().float()
    low, high = images.amin(dim=(1, 2, 3), keepdim=True), images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - low) / (high - low).clamp_min(1e-8)


def _vertical(text: str, face: ImageFont.ImageFont) -> Image.Image:
    """`text` written bottom to top, for the column names of the matrix."""
    width, height = text_size(text, face)
    strip = Image.new("RGB", (width + 2, height + 2), WHITE)
    ImageDraw.Draw(strip).text((0, 0), text, fill=BLACK, font=face)
    return strip.rotate(90, expand=True)


def confusion_matrix_image(matrix: Sequence[Sequence[int]], names: Sequence[str]) -> Image.Image:
    """The confusion matrix (rows: true class, columns: predicted class) with each cell's count, coloured by its
    share of the row (white 0 to dark blue 1, so that each true class reads the same however many samples it
    has), class names on both axes. Above LABELLED_CLASSES classes, colours only."""
    n = len(matrix)
    face, small = font(13), font(11)
    labelled = n <= LABELLED_CLASSES
    cell = max(30, max(text_size(str(c), face)[0] for row in matrix for c in row) + 10) if labelled \
        else max(3, 900 // n)
    name_width = max(text_size(name, face)[0] for name in names) + 8 if labelled else 0
    title = "rows: true class, columns: predicted class; colour: share of the row"
    left, top = name_width + 26, name_width + 44
    width = max(left + n * cell + 10, text_size(title, small)[0] + 20)
    image = Image.new("RGB", (width, top + n * cell + 10), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((10, 6), title, fill=BLACK, font=small)
    draw.text((left + (n * cell - text_size("predicted", small)[0]) / 2, 24), "predicted", fill=BLACK, font=small)
    label = _vertical("true", small)
    image.paste(label, (4, top + (n * cell - label.height) // 2))
    for i, row in enumerate(matrix):
        total = sum(row)
        for j, count in enumerate(row):
            share = count / total if total else 0.0
            colour = tuple(round(w + (d - w) * share) for w, d in zip(WHITE, DARK))
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(220, 220, 220) if labelled
                           else None)
            if labelled:
                w, h = text_size(str(count), face)
                draw.text((x + (cell - w) / 2, y + (cell - h) / 2), str(count), font=face,
                          fill=WHITE if share > 0.5 else BLACK)
    if labelled:
        for k, name in enumerate(names):
            w, h = text_size(name, face)
            draw.text((left - w - 6, top + k * cell + (cell - h) / 2), name, fill=BLACK, font=face)
            strip = _vertical(name, face)
            image.paste(strip, (left + k * cell + (cell - strip.width) // 2, top - strip.height - 4))
    return image


def image_grid(images: Sequence[torch.Tensor], captions: Sequence[Sequence[str]], columns: int = 4) -> Image.Image:
    """Images (C, H, W, values already in 0..1; 1 or 3 channels) in a grid, enlarged to about 96 px without
    smoothing, each with its caption lines below it."""
    face = font(12)
    height, width = images[0].shape[-2:]
    zoom = max(1, 96 // max(height, width))
    line = text_size("Hg", face)[1] + 3
    cell_w = max(width * zoom, *(text_size(text, face)[0] for lines in captions for text in lines)) + 12
    cell_h = height * zoom + line * max(len(lines) for lines in captions) + 14
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (cell_w * min(columns, len(images)), cell_h * rows), WHITE)
    draw = ImageDraw.Draw(grid)
    for k, (picture, lines) in enumerate(zip(images, captions)):
        pixels = (picture.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
        tile = Image.frombytes("L" if pixels.shape[2] == 1 else "RGB", (width, height), pixels.numpy().tobytes())
        tile = tile.convert("RGB").resize((width * zoom, height * zoom), Image.NEAREST)
        x, y = (k % columns) * cell_w, (k // columns) * cell_h
        grid.paste(tile, (x + (cell_w - tile.width) // 2, y + 6))
        for i, text in enumerate(lines):
            draw.text((x + 6, y + tile.height + 9 + i * line), text, fill=BLACK, font=face)
    return grid


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values between `low` and `high` (1, 2 or 5 times a power of ten apart)."""
    raw = (high - low) / count or 1.0
    power = 10 ** math.floor(math.log10(raw))
    step = next(power * m for m in (1, 2, 5, 10) if power * m >= raw)
    return [k * step for k in range(math.ceil(low / step), math.floor(high / step) + 1)]


def lr_plot(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float],
            suggestion: float | None) -> Image.Image:
    """Loss against the learning rate on a log scale: each step's loss (grey), the smoothed loss (blue), and
    the suggested rate (a red line). The loss axis spans the smoothed curve; higher raw losses sit on its top."""
    face = font(12)
    size, (left, right, top, bottom) = (720, 440), (64, 20, 34, 46)
    xs = [math.log10(lr) for lr in lrs]
    finite = [v for v in smoothed if math.isfinite(v)]
    y_low, y_high = min(finite + [v for v in losses if math.isfinite(v)]), max(finite)
    y_high = y_high if y_high > y_low else y_low + 1.0
    x_low, x_high = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        y = min(max(y, y_low), y_high) if math.isfinite(y) else y_high
        return (left + (x - x_low) / (x_high - x_low) * (size[0] - left - right),
                size[1] - bottom - (y - y_low) / (y_high - y_low) * (size[1] - top - bottom))

    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, size[0] - right, size[1] - bottom], outline=BLACK)
    for power in range(math.ceil(x_low), math.floor(x_high) + 1):
        x, _ = at(power, y_low)
        draw.line([x, top, x, size[1] - bottom], fill=(235, 235, 235))
        label = f"1e{power}"
        draw.text((x - text_size(label, face)[0] / 2, size[1] - bottom + 6), label, fill=BLACK, font=face)
    for value in _ticks(y_low, y_high):
        _, y = at(x_low, value)
        label = f"{value:.3g}"
        draw.text((left - text_size(label, face)[0] - 6, y - 7), label, fill=BLACK, font=face)
    draw.text((size[0] / 2 - 60, size[1] - 20), "learning rate (log scale)", fill=BLACK, font=face)
    draw.text((8, 8), "loss per step (grey) and smoothed (blue)", fill=BLACK, font=face)
    draw.line([at(x, y) for x, y in zip(xs, losses)], fill=GREY, width=1)
    draw.line([at(x, y) for x, y in zip(xs, smoothed)], fill=BLUE, width=2)
    if suggestion is not None:
        x, _ = at(math.log10(suggestion), y_low)
        draw.line([x, top, x, size[1] - bottom], fill=RED, width=2)
        draw.text((x + 5, top + 4), f"suggested {suggestion:.2g}", fill=RED, font=face)
    return image
