"""Video and frame decoding: round trips, every failure as a VideoDecodeError with its reason, frame geometry."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
import time

import av
import numpy as np
import pytest
from PIL import Image

from models.video_io import (
    FrameTransform,
    VideoDecodeError,
    analysis_frame,
    decode_png,
    encode_png,
    frame_transform,
    iter_video_frames,
    read_image_frame,
    resize_frame,
    sample_indices,
    video_info,
)
from toyworld.videos import encode_mp4, render_clip

LIMITS = {"max_frames": 100, "max_pixels": 1_000_000}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return render_clip("circle", "red", "right", "black", np.random.default_rng(7), frames=8, size=32)


@pytest.fixture(scope="module")
def mp4(clip) -> bytes:
    return encode_mp4(clip)


def encode_to_file(tmp_path, frames, *, fmt: str, codec: str, options: dict | None = None) -> bytes:
    """Encode through a real file (mp4 ``faststart`` rewrites the file after writing it)."""
    path = tmp_path / f"clip.{fmt}"
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def packet_offsets(data: bytes) -> list[int]:
    with av.open(io.BytesIO(data)) as container:
        return [p.pos for p in container.demux(video=0) if p.size]


def decode_error(data: bytes, **limits) -> VideoDecodeError:
    with pytest.raises(VideoDecodeError) as caught:
        list(iter_video_frames(data, **{**LIMITS, **limits}, name="clip-7"))
    return caught.value


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_mp4_round_trips_to_its_frames_within_a_few_grey_levels(clip, mp4):
    info = video_info(mp4)
    assert (info.fps, info.width, info.height, info.frames, info.codec) == (8.0, 32, 32, 8, "h264")
    assert info.container == "mov"
    frames = list(iter_video_frames(mp4, **LIMITS))
    assert len(frames) == 8
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in frames)
    assert np.abs(np.stack(frames).astype(int) - clip.astype(int)).mean() < 6


def test_decoding_is_deterministic(mp4):
    first = np.stack(list(iter_video_frames(mp4, **LIMITS)))
    second = np.stack(list(iter_video_frames(mp4, **LIMITS)))
    assert np.array_equal(first, second)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "zero bytes"),
        (png_bytes(np.zeros((8, 8, 3), np.uint8)), "not a video container"),
        (b"just some caption text, not a video\n", "not a video container (text or another format?)"),
    ],
    ids=["zero-byte", "png-bytes", "text-bytes"],
)
def test_zero_bytes_images_and_text_are_undecodable_and_named(data, words):
    with pytest.raises(VideoDecodeError) as caught:
        video_info(data, name="k1.mp4")
    assert caught.value.reason == "undecodable"
    assert words in str(caught.value) and "k1.mp4" in str(caught.value)
    assert decode_error(data).reason == "undecodable"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_mp4_is_quarantined_as_undecodable(mp4, fraction):
    # The toy mp4 keeps its index (moov) after the data: at 50% the index is gone and opening fails; at 90% FFmpeg
    # still parses a damaged index that declares 8 frames, then demuxes none of them, silently.
    error = decode_error(mp4[: int(len(mp4) * fraction)])
    assert error.reason == "undecodable"
    assert "clip-7" in str(error)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.97])
def test_truncated_faststart_mp4_with_its_index_first_is_undecodable(tmp_path, clip, fraction):
    data = encode_to_file(tmp_path, clip, fmt="mp4", codec="mpeg4", options={"movflags": "faststart"})
    assert decode_error(data[: int(len(data) * fraction)]).reason == "undecodable"


def test_an_mp4_cut_between_packets_is_truncated_with_declared_and_decoded_counts(tmp_path, clip):
    data = encode_to_file(tmp_path, clip, fmt="mp4", codec="mpeg4", options={"movflags": "faststart"})
    offsets = packet_offsets(data)
    assert len(offsets) == 8
    # No packet is cut short here: the demuxer simply stops, without an error, after five frames.
    error = decode_error(data[: offsets[5]])
    assert error.reason == "undecodable"
    assert "truncated: declared 8 frames, decoded 5" in str(error)


def test_a_webm_cut_between_packets_is_truncated_against_its_declared_duration(tmp_path, clip):
    data = encode_to_file(tmp_path, clip, fmt="webm", codec="libvpx-vp9")
    assert video_info(data).frames is None  # Matroska declares no frame count
    assert len(list(iter_video_frames(data, **LIMITS))) == 8
    error = decode_error(data[: packet_offsets(data)[5]])
    assert error.reason == "undecodable" and "about 8 frames, decoded 5" in str(error)


def test_a_frame_size_above_max_pixels_is_too_large_before_any_frame(mp4):
    frames = iter_video_frames(mp4, max_frames=100, max_pixels=32 * 32 - 1, name="big.mp4")
    with pytest.raises(VideoDecodeError) as caught:
        next(frames)
    assert caught.value.reason == "too_large" and "32x32" in str(caught.value) and "big.mp4" in str(caught.value)


def test_a_declared_frame_count_above_max_frames_is_too_long_before_any_frame(mp4):
    frames = iter_video_frames(mp4, max_frames=5, max_pixels=1_000_000, name="long.mp4")
    with pytest.raises(VideoDecodeError) as caught:
        next(frames)
    assert caught.value.reason == "too_long" and "declares 8 frames > max_frames=5" in str(caught.value)
    assert len(list(iter_video_frames(mp4, max_frames=8, max_pixels=1_000_000))) == 8


def test_without_a_declared_count_too_long_comes_after_the_allowed_frames(tmp_path, clip):
    webm = encode_to_file(tmp_path, clip, fmt="webm", codec="libvpx-vp9")
    frames = iter_video_frames(webm, max_frames=5, max_pixels=1_000_000)
    got = [next(frames) for _ in range(5)]
    with pytest.raises(VideoDecodeError) as caught:
        next(frames)
    assert len(got) == 5 and caught.value.reason == "too_long"


@pytest.mark.parametrize(("fmt", "codec"), [("mp4", "mpeg4"), ("mov", "mpeg4"), ("avi", "mpeg4"),
                                            ("matroska", "mpeg4"), ("webm", "libvpx-vp9")])  # fmt: skip
def test_every_allow_listed_container_still_decodes(tmp_path, clip, fmt, codec):
    data = encode_to_file(tmp_path, clip, fmt=fmt, codec=codec)
    assert len(list(iter_video_frames(data, **LIMITS))) == 8


class _Watch:
    """Runs ``check`` every millisecond in a thread while the ``with`` body runs; ``hit`` says if it ever saw it."""

    def __init__(self, check):
        self.check, self.hit, self._stop = check, False, threading.Event()

    def __enter__(self):
        def loop():
            while not self._stop.is_set() and not self.hit:
                self.hit = self.check()
                time.sleep(0.001)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.mark.timeout(60)
def test_a_concat_playlist_saved_as_mp4_cannot_open_another_file(tmp_path, monkeypatch, mp4):
    # ffconcat resolves a relative name against the working directory. The named file is a FIFO: a writer can
    # open it (non-blocking) only while some reader has it open, so the watcher sees any open by FFmpeg, and then
    # feeds it a real video so nothing blocks.
    os.mkfifo(tmp_path / "secret.mp4")
    monkeypatch.chdir(tmp_path)

    def opened_by_a_reader() -> bool:
        try:
            fd = os.open(tmp_path / "secret.mp4", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return False
        os.set_blocking(fd, True)
        with contextlib.suppress(OSError):
            os.write(fd, mp4)
        os.close(fd)
        return True

    with _Watch(opened_by_a_reader) as watch:
        error = decode_error(b"ffconcat version 1.0\nfile 'secret.mp4'\n")
    assert not watch.hit, "FFmpeg opened the file the playlist names"
    assert error.reason == "undecodable" and "match none of mp4/mov, matroska/webm, avi" in str(error)


@pytest.mark.timeout(60)
def test_a_session_description_saved_as_mp4_never_listens_on_its_port():
    # FFmpeg's SDP demuxer binds the UDP port the description names and waits for RTP there.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def port_taken() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return True
        return False

    sdp = (f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video {port} RTP/AVP 96\n"
           "a=rtpmap:96 H264/90000\n").encode()  # fmt: skip
    with _Watch(port_taken) as watch:
        error = decode_error(sdp)
    assert not watch.hit, f"FFmpeg bound UDP port {port}"
    assert error.reason == "undecodable" and "match none of" in str(error)


@pytest.mark.timeout(60)
def test_an_hls_playlist_saved_as_mp4_is_refused_before_any_demuxer_sees_it():
    hls = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nhttp://127.0.0.1:9/a.ts\n#EXT-X-ENDLIST\n"
    error = decode_error(hls)
    assert error.reason == "undecodable" and "match none of" in str(error)


def test_an_mp4_signature_cannot_smuggle_a_nested_open(mp4):
    # The header names the demuxer, and the open allows no protocol: an mp4 body that is really a playlist fails.
    fake = mp4[:4] + b"ftyp" + b"ffconcat version 1.0\nfile 'http://127.0.0.1:9/a.mp4'\n"
    assert decode_error(fake).reason == "undecodable"


def test_a_decode_error_only_takes_known_reason_codes():
    with pytest.raises(ValueError, match="reason"):
        VideoDecodeError("broken", "x")


def test_a_png_frame_file_reads_as_its_exact_rgb_pixels(tmp_path, clip):
    path = tmp_path / "0001.png"
    path.write_bytes(png_bytes(clip[0]))
    assert np.array_equal(read_image_frame(path, max_pixels=10_000, max_bytes=100_000), clip[0])


def test_a_transparent_frame_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    path = tmp_path / "0001.png"
    Image.fromarray(rgba).save(path)
    assert (read_image_frame(path, max_pixels=100, max_bytes=10_000) == 255).all()


@pytest.mark.parametrize("case", ["zero-byte", "truncated", "not-an-image", "absent"])
def test_unreadable_frame_files_are_missing_frames_naming_the_file(tmp_path, clip, case):
    path = tmp_path / "0003.png"
    data = png_bytes(clip[0])
    contents = {"zero-byte": b"", "truncated": data[: len(data) // 2], "not-an-image": b"hello"}
    if case in contents:
        path.write_bytes(contents[case])
    with pytest.raises(VideoDecodeError) as caught:
        read_image_frame(path, max_pixels=10_000, max_bytes=100_000)
    assert caught.value.reason == "missing_frames" and str(path) in str(caught.value)


def test_frame_files_above_the_pixel_or_byte_limit_are_too_large(tmp_path, clip):
    path = tmp_path / "0001.png"
    path.write_bytes(png_bytes(clip[0]))
    for limits in ({"max_pixels": 32 * 32 - 1, "max_bytes": 100_000}, {"max_pixels": 10_000, "max_bytes": 10}):
        with pytest.raises(VideoDecodeError) as caught:
            read_image_frame(path, **limits)
        assert caught.value.reason == "too_large" and str(path) in str(caught.value)


def test_a_square_transform_of_a_wide_frame_scales_the_short_side_and_crops_the_centre():
    t = frame_transform(48, 32, short_side=16, square=True)
    assert (t.scale, t.left, t.top, t.out_width, t.out_height) == (0.5, 4.0, 0.0, 16, 16)
    assert np.allclose(t.apply(np.array([24.0, 16.0])), [8.0, 8.0])  # centre stays the centre
    assert np.allclose(t.apply(np.array([[8.0, 0.0], [40.0, 32.0]])), [[0.0, 0.0], [16.0, 16.0]])  # crop corners
    frame = np.zeros((32, 48, 3), np.uint8)
    assert resize_frame(frame, t).shape == (16, 16, 3)


def test_a_non_square_transform_keeps_the_aspect():
    t = frame_transform(48, 32, short_side=16, square=False)
    assert (t.out_width, t.out_height, t.left, t.top) == (24, 16, 0.0, 0.0)
    tall = frame_transform(30, 50, short_side=16, square=False)
    assert (tall.out_width, tall.out_height) == (16, 26)
    assert resize_frame(np.zeros((50, 30, 3), np.uint8), tall).shape == (26, 16, 3)


def test_resized_pixels_agree_with_the_keypoint_mapping():
    # Pixel i of the source holds 5*i, a ramp in x; the value at continuous x is 5*(x - 0.5).
    ramp = np.broadcast_to((np.arange(48) * 5).astype(np.uint8)[None, :, None], (32, 48, 3)).copy()
    t = frame_transform(48, 32, short_side=16, square=True)
    out = resize_frame(ramp, t)
    centres = np.arange(16) + 0.5
    source_x = (centres + t.left) / t.scale  # inverse of x' = x*scale - left
    expected = 5 * (source_x - 0.5)
    assert np.abs(out[8, 2:-2, 0].astype(float) - expected[2:-2]).max() <= 1.5


def test_a_frame_already_at_the_target_size_is_returned_unchanged_and_a_pure_crop_is_exact(clip):
    frame = clip[0]
    same = resize_frame(frame, frame_transform(32, 32, short_side=32, square=True))
    assert np.array_equal(same, frame)
    wide = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    assert np.array_equal(resize_frame(wide, frame_transform(48, 32, short_side=32, square=True)), wide[:, 8:40])


def test_a_transform_for_another_frame_size_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        resize_frame(np.zeros((16, 16, 3), np.uint8), FrameTransform(0.5, 4.0, 0.0, 16, 16))


def test_analysis_frames_are_small_grey_floats_in_the_unit_range(clip):
    grey = analysis_frame(clip[0], size=8)
    assert grey.shape == (8, 8) and grey.dtype == np.float32
    assert 0.0 <= grey.min() <= grey.max() <= 1.0
    flat = analysis_frame(np.full((20, 40, 3), 128, np.uint8))
    assert flat.shape == (32, 32) and np.allclose(flat, 128 / 255, atol=1e-4)


def test_sample_indices_centre_the_window_and_refuse_clips_that_are_too_short():
    assert sample_indices(10, frames=3, stride=2) == [2, 4, 6]
    assert sample_indices(10, frames=3, stride=2, start=100) == [102, 104, 106]
    assert sample_indices(5, frames=3, stride=2) == [0, 2, 4]
    assert sample_indices(4, frames=3, stride=2) is None
    assert sample_indices(1, frames=1, stride=4) == [0]


def test_png_round_trip_is_exact_and_deterministic(clip):
    data = encode_png(clip[3])
    assert data == encode_png(clip[3])
    assert np.array_equal(decode_png(data), clip[3])
    with pytest.raises(VideoDecodeError):
        decode_png(b"not a png")


def test_a_stream_declaring_zero_fps_is_undecodable_not_a_one_frame_clip(mp4):
    from toyworld.hostile import _zero_fps

    with pytest.raises(VideoDecodeError) as err:
        video_info(_zero_fps(mp4))
    assert err.value.reason == "undecodable" and "fps" in str(err.value)
