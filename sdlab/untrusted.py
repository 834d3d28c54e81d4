"""Files a user hands sdlab, read as data within `limit`: regular files, bounded bytes, lines, JSON and PNG text, images
read to their end undecoded; each refusal is one UserError line naming the file by its `label` (`params=x.json`)."""

from __future__ import annotations

import json
import mmap
import os
import re
import stat
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from sdlab.errors import UserError, repeats

MAX_JSON_DEPTH = 32  # lists and objects inside each other; sdlab's own files need 3
RAISE_HINT = "raise it with limits.{}=N"
CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # no text holds these: NUL, escape sequences, delete
SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: what an undecodable byte becomes in Python
TRUNCATED = "image file is truncated"  # Pillow's words when it decodes a file cut short
# A JPEG marker that a segment's length follows, or end-of-image; not FF 00 (a stuffed 0xFF of a scan's data), TEM,
# the restarts RST0-7, start-of-image, nor FF FF (a fill byte before a marker)
SEGMENT = re.compile(rb"\xff[^\x00\x01\xd0-\xd8\xff]")
FILE_TYPES = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device",
              stat.S_IFSOCK: "a socket"}  # what a path that is not a regular file is


@contextmanager
def open_regular(path: str | Path, label: str, what: str, key: str = "", limit: dict[str, int] | None = None
                 ) -> Iterator[IO[bytes]]:
    """The regular file opened for reading, at most `limit[key]` bytes (with a key); a FIFO is refused unblocked, and
    a read that fails is one UserError line."""
    try:
        fd = os.open(Path(path).expanduser(), os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting
    except FileNotFoundError:
        raise UserError(f"{label} does not exist") from None
    except OSError as e:
        raise UserError(f"{label} cannot be read: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = FILE_TYPES.get(stat.S_IFMT(mode), "not a regular file")
        raise UserError(f"{label} is not a regular file ({kind}); give {what}")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as f:
        if key and os.fstat(fd).st_size > limit[key]:
            raise _too_big(label, key, limit)
        try:
            yield f
        except OSError as e:
            raise UserError(f"{label} cannot be read: {e.strerror or e}") from None


def _too_big(label: str, key: str, limit: dict[str, int]) -> UserError:
    return UserError(f"{label} is larger than limits.{key}={limit[key]}; " + RAISE_HINT.format(key))


def read_bytes(path: str | Path, label: str, what: str, key: str, limit: dict[str, int]) -> bytes:
    """A regular file's bytes, at most `limit[key]` of them; a bigger file is refused before it is read."""
    with open_regular(path, label, what, key, limit) as f:
        data = f.read(limit[key] + 1)
    if len(data) > limit[key]:  # it grew since
        raise _too_big(label, key, limit)
    return data


def read_prompt_lines(path: str | Path, label: str, limit: dict[str, int]) -> list[str]:
    """The non-empty lines of a UTF-8 prompt file, stripped, within `max_prompt_file_bytes` and `max_prompt_lines`."""
    raw = read_bytes(path, label, "a UTF-8 text file, one prompt per line", "max_prompt_file_bytes", limit)
    try:
        text = raw.decode("utf-8-sig")  # the byte order mark a Windows editor may put first is no part of a prompt
    except UnicodeDecodeError as e:
        raise UserError(f"{label} is not UTF-8 text (byte {e.start}); give a text file, one prompt per line") from None
    check_text(text, label)
    lines = [line.strip() for line in re.split(r"\r?\n|\r", text) if line.strip()]  # splitlines ends more: U+2028
    if len(lines) > limit["max_prompt_lines"]:
        raise UserError(f"{label} holds {len(lines)} prompts, more than limits.max_prompt_lines="
                        f"{limit['max_prompt_lines']}; " + RAISE_HINT.format("max_prompt_lines"))
    return lines


def check_text(text: str, label: str) -> None:
    """Refuse text holding a control character (NUL, an escape sequence...), naming it and its line."""
    if found := CONTROL.search(text):
        line = f" line {text.count(chr(10), 0, found.start()) + 1}" if "\n" in text else ""
        raise UserError(f"{label}{line} holds the control character {found.group()!r}; give plain text")
    if found := SURROGATE.search(text):  # a byte of the command line that is no UTF-8, or a JSON "\ud800"
        code = ord(found.group())
        what = f"byte {code - 0xDC00:#x}" if 0xDC80 <= code <= 0xDCFF else f"{ascii(found.group())} (half a UTF-16 pair)"
        raise UserError(f"{label}={ascii(text[:60])} is not UTF-8 text: {what} is no character; give UTF-8 text")


def json_depth(value: Any) -> int:
    """How deep lists and objects nest in a parsed JSON value (a number or string: 0)."""
    depth, level = 0, [(value, 1)]
    while level:
        item, d = level.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            depth = max(depth, d)
            if depth > MAX_JSON_DEPTH:
                return depth
            level.extend((child, d + 1) for child in children)
    return depth


def parse_json(raw: bytes | str, label: str) -> Any:
    """JSON text as Python values, or one UserError line: not UTF-8, not JSON, a key twice in an object (which JSON
    leaves undefined), nested too deep, a huge integer."""
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len(pairs) > len(obj := dict(pairs)):
            raise UserError(f"{label} sets {repeats(key for key, _ in pairs)[0]!r} twice; keep one")
        return obj

    try:
        data = json.loads(raw.decode("utf-8-sig") if isinstance(raw, bytes) else raw,  # a byte order mark may lead
                          object_pairs_hook=unique)
    except json.JSONDecodeError as e:
        raise UserError(f"{label} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        data, depth = None, MAX_JSON_DEPTH + 1
    except UnicodeDecodeError as e:
        raise UserError(f"{label} is not UTF-8 text (byte {e.start}); give a JSON file") from None
    except ValueError:  # Python refuses to convert integers of more digits than sys.get_int_max_str_digits()
        digits = sys.get_int_max_str_digits()
        raise UserError(f"{label} cannot be read: it holds an integer of more than {digits} digits; "
                        "numbers in it must fit the values they set") from None
    else:
        depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise UserError(f"{label} nests too deeply (more than {MAX_JSON_DEPTH} levels of lists and objects); "
                        "give a flat JSON object")
    return data


@contextmanager
def image_faults(label: str, kind: str, what: str) -> Iterator[None]:
    """Pillow's refusals while a file is opened as an image, as one UserError line: not `kind`, or damaged."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except UnidentifiedImageError:
        raise UserError(f"{label} is not {kind}; give {what}") from None
    except (Image.DecompressionBombError, SyntaxError, OSError, EOFError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{label} is not {kind} ({reason}); give {what}") from None


def jpeg_reaches_its_end(data: bytes | mmap.mmap) -> bool:
    """Whether a JPEG's markers lead to its end-of-image marker (ITU T.81 B.1), segments skipped by their length."""
    at = 2  # after the start-of-image marker; skipping segments leaves an EXIF thumbnail's markers unseen
    while marker := SEGMENT.search(data, at):
        if marker[0][1] == 0xD9:
            return True
        at = marker.end() + int.from_bytes(data[marker.end():marker.end() + 2], "big")
    return False


def check_whole(image: Image.Image, f: IO[bytes]) -> None:
    """Refuse (inside `image_faults`) a freshly opened image cut short; other formats than PNG and JPEG are decoded."""
    if image.format == "PNG":
        try:
            image.verify()
        except OSError as e:  # Pillow's "truncated PNG file" or "Truncated File Read": said as a decoder says it
            if "truncated" not in str(e).lower():
                raise
            raise OSError(TRUNCATED) from None
    elif image.format == "JPEG":
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if not jpeg_reaches_its_end(data):
                raise OSError(TRUNCATED)
    else:
        image.load()


def check_pixels(image: Image.Image, label: str, max_pixels: int) -> None:
    """Refuse an opened image of more than `max_pixels` (`limits.max_input_pixels`), known from its header alone."""
    width, height = image.size
    if width * height > max_pixels:
        raise UserError(f"{label} is {width}x{height} px = {width * height} pixels, above limits.max_input_pixels="
                        f"{max_pixels}; raise it with limits.max_input_pixels=N on a machine that can take it")


def check_image(path: str | Path, label: str, what: str, max_pixels: int) -> None:
    """A regular file that opens as an image of at most `max_pixels` and is not cut short (`check_whole`; PNG and JPEG
    pixels not decoded)."""
    with open_regular(path, label, what) as f, image_faults(label, "an image", what), Image.open(f) as image:
        check_pixels(image, label, max_pixels)
        check_whole(image, f)


def read_png_text(path: str | Path, label: str, limit: dict[str, int]) -> dict[str, str]:
    """A PNG's text chunks before its image data, pixels never decoded, within the `limit` on each and on all."""
    chunk, total, what = limit["max_params_bytes"], limit["max_png_text_bytes"], "a PNG image or a JSON file"
    before = PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY
    PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = chunk, total  # for this read
    try:
        with (open_regular(path, label, what, "max_png_bytes", limit) as f,
              image_faults(label, "a readable PNG image", what)):
            try:
                with Image.open(f, formats=["PNG"]) as image:
                    text = {k: str(v) for k, v in image.info.items() if isinstance(v, str)}
            except ValueError as e:
                if "MAX_TEXT" not in str(e):  # Pillow names the bound it hit; other faults are damage
                    raise
                key = "max_png_text_bytes" if "MAX_TEXT_MEMORY" in str(e) else "max_params_bytes"
                raise UserError(f"{label} has more PNG text than limits.{key}={limit[key]} allows; "
                                + RAISE_HINT.format(key)) from None
    finally:
        PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = before
    for key, value in text.items():
        if len(value) > chunk:
            raise UserError(f"{label}: its {key!r} text chunk is larger than limits.max_params_bytes={chunk}; "
                            + RAISE_HINT.format("max_params_bytes"))
    return text


def read_params(path: str | Path, label: str, limit: dict[str, int]) -> tuple[str, Any]:
    """A params file's form and value: "json" (a JSON file), "sdlab" (a PNG's own record) or "infotext" (a tool's)."""
    if Path(path).suffix.lower() != ".png":
        raw = read_bytes(path, label, "a JSON file or a PNG image", "max_params_bytes", limit)
        return "json", parse_json(raw, label)
    chunks = read_png_text(path, label, limit)
    if "sdlab" in chunks:
        record = parse_json(chunks["sdlab"], f"{label}'s sdlab text chunk")
        if not isinstance(record, dict):
            raise UserError(f"{label}'s sdlab text chunk must hold a JSON object, not {type(record).__name__}")
        return "sdlab", record
    if "parameters" in chunks:
        return "infotext", chunks["parameters"]
    raise UserError(f"{label} carries no generation parameters (no 'sdlab' or 'parameters' text chunk)")
