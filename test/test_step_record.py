"""StepRecord codec: rclpy and rosbags Step messages round-trip bit-exactly; bad steps are
refused with the reason."""

from __future__ import annotations

import array
import functools
from types import SimpleNamespace

import numpy as np
import pytest

from drqv2_ros.observation.step_record import StepFormatError, StepRecord, from_msg, to_msg


def make_record(index=3, views=1, h=84, w=84, seed=0, **kw) -> StepRecord:
    rng = np.random.default_rng(seed)
    fields = dict(
        episode=7, index=index, stamp_ns=1_700_000_000_123_456_789, is_first=index == 0,
        is_last=False, terminated=False,
        images=rng.integers(0, 256, (views, 3, h, w), dtype=np.uint8),
        low_dim=rng.standard_normal(18).astype(np.float32),
        action=(np.zeros(0, np.float32) if index == 0
                else rng.uniform(-1, 1, 4).astype(np.float32)),
        reward=0.0 if index == 0 else 0.25, is_intervention=index % 2 == 1, is_demo=True,
    )
    fields.update(kw)
    return StepRecord(**fields)


def rclpy_classes():
    pytest.importorskip("rclpy")
    from sensor_msgs.msg import Image

    from drqv2_ros.msg import Step

    return Step, Image


def test_rclpy_round_trip_multi_view():
    Step, Image = rclpy_classes()
    rec = make_record(views=2, frame_ids=("front", "wrist"))
    msg = to_msg(rec, Step, Image)
    assert msg.images[0].encoding == "rgb8" and msg.images[1].header.frame_id == "wrist"
    back = from_msg(msg)
    assert back.equals(rec)
    assert back.frame_ids == ("front", "wrist")
    assert back.images.flags["C_CONTIGUOUS"] and back.images.dtype == np.uint8


def test_rclpy_and_rosbags_serializations_decode_alike():
    Step, Image = rclpy_classes()
    from rclpy.serialization import deserialize_message, serialize_message

    from drqv2_ros.bags.typestore import STEP_TYPE, project_typestore, step_to_rosbags

    ts = project_typestore()
    rec = make_record()
    raw_rosbags = ts.serialize_cdr(step_to_rosbags(rec, ts), STEP_TYPE)
    raw_rclpy = serialize_message(to_msg(rec, Step, Image))
    # Same CDR layout (padding bytes aside, which Fast CDR leaves unset).
    assert len(raw_rosbags) == len(raw_rclpy)
    assert from_msg(ts.deserialize_cdr(raw_rclpy, STEP_TYPE)).equals(rec)
    assert from_msg(deserialize_message(bytes(raw_rosbags), Step)).equals(rec)


def test_typestore_hash_matches_generated_interface():
    from drqv2_ros.bags.typestore import STEP_TYPE, msg_dir, project_typestore

    ts = project_typestore()
    generated = msg_dir() / "Step.json"
    if not generated.is_file():
        pytest.skip("no generated type description (interfaces not installed)")
    import json

    hashes = {h["type_name"]: h["hash_string"]
              for h in json.loads(generated.read_text())["type_hashes"]}
    assert ts.hash_rihs01(STEP_TYPE) == hashes[STEP_TYPE]


def ns_msg(rec: StepRecord, data_kind="bytes", step_pad=0, encoding="rgb8"):
    """A duck-typed Step (plain objects) with image data as bytes / array / list / numpy."""
    imgs = []
    for view in rec.images:
        hwc = view.transpose(1, 2, 0)
        h, w = hwc.shape[:2]
        rows = np.zeros((h, 3 * w + step_pad), np.uint8)
        rows[:, : 3 * w] = hwc.reshape(h, 3 * w)
        flat = rows.reshape(-1)
        data = {"bytes": flat.tobytes(), "array": array.array("B", flat.tobytes()),
                "list": flat.tolist(), "numpy": flat}[data_kind]
        imgs.append(SimpleNamespace(header=SimpleNamespace(frame_id=""), height=h, width=w,
                                    encoding=encoding, is_bigendian=0, step=3 * w + step_pad,
                                    data=data))
    sec, nsec = divmod(rec.stamp_ns, 1_000_000_000)
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nsec)),
        episode=rec.episode, index=rec.index, is_first=rec.is_first, is_last=rec.is_last,
        terminated=rec.terminated, images=imgs, low_dim=rec.low_dim.tolist(),
        action=array.array("f", rec.action.tobytes()), reward=rec.reward,
        is_intervention=rec.is_intervention, is_demo=rec.is_demo)


@pytest.mark.parametrize("kind", ["bytes", "array", "list", "numpy"])
def test_duck_typed_data_kinds_and_row_padding(kind):
    rec = make_record(h=6, w=5)
    assert from_msg(ns_msg(rec, kind)).equals(rec)
    assert from_msg(ns_msg(rec, kind, step_pad=4)).equals(rec)


def test_result_does_not_alias_message_buffers():
    rec = make_record(h=4, w=4)
    msg = ns_msg(rec, "numpy")
    out = from_msg(msg)
    msg.images[0].data[:] = 0
    assert out.equals(rec)


def test_first_step_action_filled_with_zeros_when_size_known():
    rec = make_record(index=0)
    out = from_msg(ns_msg(rec), action_size=4)
    assert out.action.tobytes() == np.zeros(4, np.float32).tobytes() and out.reward == 0.0
    assert from_msg(ns_msg(rec)).action.size == 0


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: setattr(m.images[0], "encoding", "bgr8"), "encoding 'bgr8'"),
    (lambda m: setattr(m.images[0], "data", m.images[0].data[:-1]), "bytes, expected"),
    (lambda m: setattr(m.images[0], "step", 3), "step 3 < width*3"),
    (lambda m: setattr(m.images[0], "height", 0), "empty image"),
    (lambda m: setattr(m, "images", []), "no images"),
    (lambda m: m.low_dim.__setitem__(2, float("nan")), "low_dim: non-finite values at indices [2]"),
    (lambda m: m.action.__setitem__(1, float("inf")), "action: non-finite"),
    (lambda m: setattr(m, "reward", float("nan")), "reward nan"),
    (lambda m: setattr(m, "action", array.array("f")), "no action"),
    (lambda m: setattr(m, "is_first", True), "is_first=True but index=3"),
    (lambda m: setattr(m, "terminated", True), "terminated but not is_last"),
    (lambda m: delattr(m, "low_dim"), "not a drqv2_ros/Step"),
])
def test_refusals_name_the_reason(mutate, reason):
    msg = ns_msg(make_record(h=4, w=4))
    mutate(msg)
    with pytest.raises(StepFormatError, match=None) as err:
        from_msg(msg)
    assert reason in str(err.value)


def test_views_of_different_sizes_refused():
    a, b = make_record(h=4, w=4), make_record(h=4, w=5)
    msg = ns_msg(a)
    msg.images += ns_msg(b).images
    with pytest.raises(StepFormatError, match="views differ in size"):
        from_msg(msg)


def test_expected_shapes_refused_with_both_shapes():
    msg = ns_msg(make_record(h=4, w=4))
    with pytest.raises(StepFormatError, match=r"image shape .*\(1, 3, 4, 4\).*\(1, 3, 84, 84\)"):
        from_msg(msg, image_shape=(1, 3, 84, 84))
    with pytest.raises(StepFormatError, match="low_dim size 18, expected 21"):
        from_msg(msg, low_dim_size=21)
    with pytest.raises(StepFormatError, match="action size 4, expected 7"):
        from_msg(msg, action_size=7)


def test_rosbags_classes_need_types():
    from drqv2_ros.bags.typestore import IMAGE_TYPE, STEP_TYPE, project_typestore

    ts = project_typestore()
    with pytest.raises(TypeError, match="types=typestore.types"):
        to_msg(make_record(), ts.types[STEP_TYPE], ts.types[IMAGE_TYPE])


# -- the serialized-bytes half (bags) ------------------------------------------------------

def rosbags_step(rng, *, index, views, h, w, pad, fids, low, act):
    """A rosbags Step with everything that moves CDR alignment varied: frame id lengths,
    row padding, sizes, views, empty arrays."""
    from drqv2_ros.bags.typestore import IMAGE_TYPE, STEP_TYPE, project_typestore

    ts = project_typestore()
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    step = 3 * w + pad
    imgs = [ts.types[IMAGE_TYPE](
        header=Header(stamp=Time(sec=5, nanosec=7), frame_id=fids[v]), height=h, width=w,
        encoding="rgb8", is_bigendian=int(rng.integers(0, 2)), step=step,
        data=rng.integers(0, 256, h * step, dtype=np.uint8)) for v in range(views)]
    msg = ts.types[STEP_TYPE](
        header=Header(stamp=Time(sec=int(rng.integers(0, 2**31)),
                                 nanosec=int(rng.integers(0, 10**9))), frame_id=fids[-1]),
        episode=int(rng.integers(0, 2**32)), index=index, is_first=index == 0,
        is_last=bool(rng.integers(0, 2)), terminated=False, images=imgs,
        low_dim=rng.standard_normal(low).astype(np.float32),
        action=rng.uniform(-1, 1, act).astype(np.float32),
        reward=float(rng.standard_normal()), is_intervention=bool(rng.integers(0, 2)),
        is_demo=bool(rng.integers(0, 2)))
    return ts, msg, bytes(ts.serialize_cdr(msg, STEP_TYPE))


def test_cdr_decoder_equals_the_deserialiser_bit_for_bit():
    """check_step_cdr (straight from the bytes) and check_step of the rosbags-deserialised
    message give the same fields and, stacked, the same arrays, over the layouts that move
    CDR alignment."""
    from drqv2_ros.bags.typestore import STEP_TYPE
    from drqv2_ros.observation.step_cdr import check_step_cdr
    from drqv2_ros.observation.step_record import check_step, stack_steps

    rng = np.random.default_rng(1)
    for case in range(120):
        views = 1 + case % 3
        index = 0 if case % 5 == 0 else 1 + case % 7
        fids = ["x" * int(rng.integers(0, 9)) for _ in range(views + 1)]
        ts, msg, raw = rosbags_step(
            rng, index=index, views=views, h=int(rng.integers(1, 6)),
            w=int(rng.integers(1, 6)), pad=int(rng.integers(0, 5)), fids=fids,
            low=int(rng.integers(0, 6)), act=0 if index == 0 else int(rng.integers(1, 5)))
        fast, slow = check_step_cdr(raw), check_step(ts.deserialize_cdr(raw, STEP_TYPE))
        assert fast[:9] == slow[:9] and fast.frame_ids == slow.frame_ids, case
        assert all(a.shape == b.shape and np.array_equal(a, b)
                   for a, b in zip(fast.views, slow.views)), case
        a, b = stack_steps([fast]), stack_steps([slow])
        for field in ("images", "low_dim", "action", "reward", "stamp_ns", "is_first",
                      "is_last", "is_intervention", "is_demo"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), (case, field)
        # a record from the bytes never aliases them
        assert not np.shares_memory(a.images, np.frombuffer(raw, np.uint8))


def test_cdr_decoder_refuses_bytes_that_are_not_a_step():
    from drqv2_ros.observation.step_cdr import check_step_cdr
    from drqv2_ros.observation.step_record import UndecodableStepError

    rng = np.random.default_rng(2)
    _ts, _msg, raw = rosbags_step(rng, index=3, views=2, h=3, w=4, pad=1, fids=["a", "bc", ""],
                                  low=5, act=4)
    check_step_cdr(raw)
    for cut in sorted({*range(0, 60), *range(60, len(raw) - 3, 7)}):  # every header cut
        with pytest.raises(UndecodableStepError):
            check_step_cdr(raw[:cut])
    bad = [raw + b"\0" * 8,  # more than CDR padding after the end
           b"\x00\x00" + raw[2:],  # big endian: for a deserialiser
           raw[:16] + b"\xff" + raw[17:]]  # the header's frame id loses its NUL
    for b in bad:
        with pytest.raises(UndecodableStepError):
            check_step_cdr(b)
    garbage = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for k in range(200):  # random bytes: refused, never another exception
        try:
            check_step_cdr(b"\x00\x01\x00\x00" + garbage[k:k + 40 + k])
        except (UndecodableStepError, StepFormatError):
            pass


def test_cdr_decoder_applies_the_same_checks():
    from drqv2_ros.observation.step_cdr import check_step_cdr
    from drqv2_ros.observation.step_record import stack_steps

    rng = np.random.default_rng(3)
    ts, msg, raw = rosbags_step(rng, index=2, views=1, h=4, w=4, pad=0, fids=["", ""],
                                low=18, act=4)
    with pytest.raises(StepFormatError, match="low_dim size 18, expected 21"):
        check_step_cdr(raw, low_dim_size=21)
    with pytest.raises(StepFormatError, match=r"image shape .*\(1, 3, 4, 4\)"):
        check_step_cdr(raw, image_shape=(1, 3, 84, 84))
    msg.low_dim[3] = np.nan
    from drqv2_ros.bags.typestore import STEP_TYPE

    raw = bytes(ts.serialize_cdr(msg, STEP_TYPE))
    with pytest.raises(StepFormatError, match=r"low_dim: non-finite values at indices \[3\]"):
        stack_steps([check_step_cdr(raw)])
    msg.images[0].encoding = "bgr8"
    with pytest.raises(StepFormatError, match="encoding 'bgr8'"):
        check_step_cdr(bytes(ts.serialize_cdr(msg, STEP_TYPE)))


def test_cdr_decoder_memory_changes_nothing(monkeypatch):
    """A StepCdrDecoder that knows the layouts of earlier messages reads every later one to
    the same fields, or the same error, as a fresh walk of its bytes: over runs of messages
    that share a layout (with values that fail the checks among them), layouts that change,
    near-matches (another encoding of the same length), and random corruptions of messages
    of a known layout. And it does take the short path for many of them."""
    from drqv2_ros.bags.typestore import STEP_TYPE
    from drqv2_ros.observation import step_cdr
    from drqv2_ros.observation.step_cdr import StepCdrDecoder, check_step_cdr
    from drqv2_ros.observation.step_record import UndecodableStepError

    def outcome(decode, raw):
        try:
            f = decode(raw)
        except (UndecodableStepError, StepFormatError) as exc:
            return type(exc).__name__, str(exc)
        return (f[:9], f.frame_ids, [(v.shape, v.tobytes()) for v in f.views],
                f.low_dim.tobytes(), f.action.tobytes())

    rng = np.random.default_rng(4)
    messages = []
    for case in range(24):  # a layout, then a run of messages of it
        views, low, act = 1 + case % 3, int(rng.integers(0, 6)), int(rng.integers(0, 5))
        geometry = dict(views=views, h=int(rng.integers(1, 5)), w=int(rng.integers(1, 5)),
                        pad=int(rng.integers(0, 4)), low=low,
                        fids=["f" * int(rng.integers(0, 4)) for _ in range(views + 1)])
        for k in range(8):
            index = 0 if k == 0 else k
            ts, msg, raw = rosbags_step(rng, index=index, act=0 if index == 0 else act,
                                        **geometry)
            change = k % 4
            if change == 1:
                msg.reward = float(rng.choice([np.nan, np.inf]))
            elif change == 2:
                msg.terminated, msg.is_last = True, False
            elif k == 7:
                msg.is_first = True  # at index 7
            if k == 5:
                msg.images[0].encoding = "bgr8"  # the same size, another string
            raw = bytes(ts.serialize_cdr(msg, STEP_TYPE))
            messages.append(raw)
            for _ in range(3):  # corruptions of a message of a known layout
                b = bytearray(raw)
                for pos in rng.integers(0, len(b), int(rng.integers(1, 4))):
                    b[pos] = int(rng.integers(0, 256))
                messages.append(bytes(b))
    walks = []
    real_walk = step_cdr._walk
    monkeypatch.setattr(step_cdr, "_walk", lambda raw: walks.append(1) or real_walk(raw))
    for shapes in ({}, {"action_size": 3, "low_dim_size": 2}):
        decoder, results, short = StepCdrDecoder(**shapes, max_layouts=4), [], []
        for raw in messages:
            walks[:] = []
            results.append(outcome(decoder, raw))
            if not walks:
                short.append(results[-1])
        fresh = [outcome(functools.partial(check_step_cdr, **shapes), raw)
                 for raw in messages]
        for k, (a, b) in enumerate(zip(results, fresh)):
            assert a == b, (shapes, k)
        # the short path read some, and refused some of those (their values); with
        # expected shapes few layouts fit, so fewer are accepted and remembered
        assert len(short) > (100 if not shapes else 5), len(short)
        if not shapes:
            assert 20 < sum(r[0] == "StepFormatError" for r in short) < len(short) - 20
        assert len({r[0] for r in results if isinstance(r[0], str)}) == 2  # both errors seen


@pytest.mark.parametrize("pad", [0, 5])
def test_chw_copy_kernels_agree(pad):
    """The OpenCV de-interleave and numpy's transpose give the same planes, rows padded
    (a strided source) or not."""
    from drqv2_ros.observation import step_record

    rng = np.random.default_rng(4)
    buf = rng.integers(0, 256, 7 * (3 * 9 + pad), dtype=np.uint8)
    hwc = buf.reshape(7, 3 * 9 + pad)[:, :27].reshape(7, 9, 3)
    want = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    kernels = [step_record._copy_chw_numpy]
    if step_record._cv2 is not None:
        kernels.append(step_record._copy_chw_cv2)
    for kernel in kernels:
        out = np.zeros((2, 3, 7, 9), np.uint8)
        kernel(out[1], hwc)
        assert np.array_equal(out[1], want) and not out[0].any(), kernel.__name__


def test_step_stack_grows_and_refuses_a_change_of_frame_size():
    from drqv2_ros.observation.step_record import StepStack, check_step

    recs = [make_record(index=k, h=5, w=6, seed=k) for k in range(9)]
    stack = StepStack(capacity=2)
    for r in recs:
        stack.append(check_step(ns_msg(r)))
    batch = stack.finish(action_size=4)
    assert len(batch) == 9 and all(batch.record(k).equals(
        r if k else StepRecord(**{**r.__dict__, "action": np.zeros(4, np.float32)}))
        for k, r in enumerate(recs))
    with pytest.raises(StepFormatError, match="differs from the steps before it"):
        stack.append(check_step(ns_msg(make_record(index=9, h=5, w=7))))


def test_fast_decoder_and_deserialiser_agree_on_mutated_messages():
    """Differential: the bag reader's decoding (the fast CDR path, the rosbags deserialiser
    where the fast path cannot read the bytes) gives, for every mutated message, exactly
    what the deserialiser alone gives: the same fields, or a refusal on both. Seeded random
    mutations of real Step CDR (byte flips anywhere, the strings' bytes especially, non
    UTF-8 included; truncations; insertions), bounded in count and time."""
    import time

    from drqv2_ros.bags.episodes import decode_step
    from drqv2_ros.bags.typestore import STEP_TYPE
    from drqv2_ros.observation.step_cdr import StepCdrDecoder
    from drqv2_ros.observation.step_record import check_step

    rng = np.random.default_rng(11)
    t0, n, refused, disagreements = time.monotonic(), 0, 0, []
    expect = {}
    decoder = StepCdrDecoder(**expect)  # one per stream, remembering layouts, as the reader
    for case in range(40):
        views = 1 + case % 2
        fids = ["cam" * int(rng.integers(0, 3)) for _ in range(views + 1)]
        ts, _msg, raw = rosbags_step(rng, index=1 + case % 3, views=views, h=2, w=3, pad=1,
                                     fids=fids, low=3, act=4)
        strings = [i for i in range(len(raw)) if 32 <= raw[i] < 127 or raw[i] == 0][:64]
        for _ in range(75):
            b = bytearray(raw)
            kind = rng.integers(0, 6)
            if kind <= 2:  # flip bytes: anywhere, or in the strings (non-UTF-8 bytes too)
                where = strings if kind == 2 and strings else range(len(b))
                for _ in range(int(rng.integers(1, 4))):
                    b[int(rng.choice(where))] = int(rng.choice([0x80, 0xC3, 0xFF, 0x00,
                                                                 rng.integers(0, 256)]))
            elif kind == 3:
                b = b[:int(rng.integers(0, len(b)))]
            elif kind == 4:
                at = int(rng.integers(0, len(b)))
                b[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 6)), dtype=np.uint8))
            else:  # a length field
                at = 4 * int(rng.integers(1, len(b) // 4))
                b[at:at + 4] = int(rng.integers(0, 300)).to_bytes(4, "little")
            b = bytes(b)
            n += 1
            try:
                got = ("ok", decode_step(b, decoder, ts, expect))
            except Exception as exc:
                got = ("refused", type(exc).__name__)
            try:
                want = ("ok", check_step(ts.deserialize_cdr(b, STEP_TYPE), **expect))
            except Exception as exc:
                want = ("refused", type(exc).__name__)
            refused += got[0] == "refused"
            if got[0] != want[0]:
                disagreements.append((case, got, want))
            elif got[0] == "ok":
                f, s = got[1], want[1]
                diff = [k for k in range(9) if not (f[k] == s[k] or f[k] != f[k] and s[k] != s[k])]
                if f.frame_ids != s.frame_ids:
                    diff.append("frame_ids")
                if len(f.views) != len(s.views) or not all(
                        x.shape == y.shape and x.tobytes() == y.tobytes()
                        for x, y in zip(f.views, s.views)):
                    diff.append("views")
                for name in ("low_dim", "action"):  # bit for bit: NaN payloads too
                    x, y = getattr(f, name), getattr(s, name)
                    if x.dtype != y.dtype or x.tobytes() != y.tobytes():
                        diff.append(name)
                if diff:
                    disagreements.append((case, "fields differ", diff))
    assert not disagreements, (len(disagreements), disagreements[:3])
    assert n == 3000 and 100 < refused < n  # both outcomes well represented
    assert time.monotonic() - t0 < 120
