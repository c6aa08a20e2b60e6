"""Pixels of a PNG as Chromium writes its screenshots (8-bit RGB or RGBA, not interlaced), with no
imaging library: enough to check what colour a page painted where."""
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {2: 3, 6: 4}  # colour type -> bytes per pixel at bit depth 8


class Png:
    def __init__(self, data):
        assert data.startswith(SIGNATURE), "not a PNG"
        position, chunks = len(SIGNATURE), {}
        while position < len(data):
            length, kind = struct.unpack(">I4s", data[position:position + 8])
            chunks.setdefault(kind, []).append(data[position + 8:position + 8 + length])
            position += 12 + length
        self.width, self.height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
        assert depth == 8 and colour in CHANNELS and not interlace, f"unexpected PNG: depth {depth}, colour type {colour}"
        self.step = CHANNELS[colour]
        self.rows = self._unfilter(zlib.decompress(b"".join(chunks[b"IDAT"])))

    def _unfilter(self, raw):
        """The rows' bytes with each row's filter (PNG specification, section 9) undone."""
        stride, step, rows, previous = self.width * self.step, self.step, [], bytearray(self.width * self.step)
        for y in range(self.height):
            start = y * (stride + 1)
            kind, row = raw[start], bytearray(raw[start + 1:start + 1 + stride])
            for x in range(stride):
                left = row[x - step] if x >= step else 0
                up = previous[x]
                corner = previous[x - step] if x >= step else 0
                if kind == 1:
                    row[x] = (row[x] + left) & 255
                elif kind == 2:
                    row[x] = (row[x] + up) & 255
                elif kind == 3:
                    row[x] = (row[x] + (left + up) // 2) & 255
                elif kind == 4:
                    guess = left + up - corner
                    nearest = min((abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - corner), 2, corner))
                    row[x] = (row[x] + nearest[2]) & 255
            rows.append(row)
            previous = row
        return rows

    def pixel(self, x, y):
        """(r, g, b) at x, y."""
        offset = x * self.step
        return tuple(self.rows[y][offset:offset + 3])


def hex_colour(text):
    """'#2e7d32' -> (46, 125, 50)."""
    return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
