"""A serial-level fake of a Feetech STS3215 bus (SO-101: motors 1..6), for tests.

It serves a pseudo-terminal: ``FakeFeetechBus().port`` is a real tty path (``/dev/pts/N``)
that LeRobot opens with pyserial like the USB adapter, so LeRobot's FeetechMotorsBus and the
``scservo_sdk`` packet code run unchanged. A thread on the pty's master side parses Feetech
protocol-0 instruction packets (``FF FF id len instr params... checksum``; checksum =
~(id + len + instr + params) & 0xFF), answers PING, READ, WRITE, REG_WRITE/ACTION,
SYNC_READ and SYNC_WRITE from a 256-byte register table per motor, and drops packets with a
bad checksum (as a servo does). Multi-byte registers are little-endian; signed registers use
Feetech's sign-magnitude encoding (sign bit 11 for Homing_Offset, 15 for positions).

Register semantics kept: Present_Position is what the test sets (``set_present``), or follows
Goal_Position when ``track_goal`` is on and torque is enabled; everything else is memory.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from dataclasses import dataclass, field

# STS3215 control table addresses (Feetech STS/SMS series), (address, length)
FIRMWARE_MAJOR = (0, 1)
FIRMWARE_MINOR = (1, 1)
MODEL_NUMBER = (3, 2)
ID = (5, 1)
BAUD_RATE = (6, 1)
MIN_POSITION_LIMIT = (9, 2)
MAX_POSITION_LIMIT = (11, 2)
HOMING_OFFSET = (31, 2)
OPERATING_MODE = (33, 1)
TORQUE_ENABLE = (40, 1)
ACCELERATION = (41, 1)
GOAL_POSITION = (42, 2)
LOCK = (55, 1)
PRESENT_POSITION = (56, 2)
PRESENT_VELOCITY = (58, 2)

SIGN_BITS = {HOMING_OFFSET[0]: 11, GOAL_POSITION[0]: 15, PRESENT_POSITION[0]: 15,
             PRESENT_VELOCITY[0]: 15}

STS3215_MODEL = 777
BROADCAST = 0xFE
PING, READ, WRITE, REG_WRITE, ACTION, SYNC_READ, SYNC_WRITE = 0x01, 0x02, 0x03, 0x04, 0x05, \
    0x82, 0x83


def checksum(body: bytes | list[int]) -> int:
    return (~sum(body)) & 0xFF


def encode_sign(value: int, sign_bit: int) -> int:
    return (-value) | (1 << sign_bit) if value < 0 else value


def decode_sign(raw: int, sign_bit: int) -> int:
    return -(raw & ~(1 << sign_bit)) if raw & (1 << sign_bit) else raw


@dataclass
class Motor:
    id: int
    mem: bytearray = field(default_factory=lambda: bytearray(256))
    pending: tuple[int, bytes] | None = None  # REG_WRITE waiting for ACTION

    def get(self, reg: tuple[int, int]) -> int:
        addr, n = reg
        raw = int.from_bytes(self.mem[addr:addr + n], "little")
        return decode_sign(raw, SIGN_BITS[addr]) if addr in SIGN_BITS else raw

    def set(self, reg: tuple[int, int], value: int) -> None:
        addr, n = reg
        if addr in SIGN_BITS:
            value = encode_sign(int(value), SIGN_BITS[addr])
        self.mem[addr:addr + n] = int(value).to_bytes(n, "little")


class FakeFeetechBus:
    """Six STS3215 servos behind a pty. Use as a context manager or call start()/stop()."""

    def __init__(self, ids=range(1, 7), firmware=(3, 10), track_goal=False):
        self.motors = {i: Motor(i) for i in ids}
        self.track_goal = track_goal
        self.answering = True  # False: the bus goes silent (unplugged cable)
        self.log: list[tuple[int, int]] = []  # (instruction, id) of every valid packet
        self.bad_checksums = 0
        self._lock = threading.Lock()
        for m in self.motors.values():
            m.set(FIRMWARE_MAJOR, firmware[0])
            m.set(FIRMWARE_MINOR, firmware[1])
            m.set(MODEL_NUMBER, STS3215_MODEL)
            m.set(ID, m.id)
            m.set(BAUD_RATE, 0)  # 1 Mbaud
            m.set(MIN_POSITION_LIMIT, 0)
            m.set(MAX_POSITION_LIMIT, 4095)
            m.set(PRESENT_POSITION, 2048)
            m.set(GOAL_POSITION, 2048)
        self._master = self._slave = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.port = ""

    # -- test-side API -------------------------------------------------------------------
    def set_calibration(self, calibration: dict[int, tuple[int, int, int]]) -> None:
        """{id: (homing_offset, range_min, range_max)} into the EEPROM registers."""
        with self._lock:
            for i, (offset, lo, hi) in calibration.items():
                self.motors[i].set(HOMING_OFFSET, offset)
                self.motors[i].set(MIN_POSITION_LIMIT, lo)
                self.motors[i].set(MAX_POSITION_LIMIT, hi)

    def set_present(self, positions: dict[int, int]) -> None:
        with self._lock:
            for i, p in positions.items():
                self.motors[i].set(PRESENT_POSITION, p)

    def goal(self, motor_id: int) -> int:
        with self._lock:
            return self.motors[motor_id].get(GOAL_POSITION)

    def register(self, motor_id: int, reg: tuple[int, int]) -> int:
        with self._lock:
            return self.motors[motor_id].get(reg)

    def count(self, instruction: int) -> int:
        with self._lock:
            return sum(1 for ins, _ in self.log if ins == instruction)

    def wait_for(self, instruction: int, at_least: int, timeout: float = 2.0) -> bool:
        """Wait until ``at_least`` packets of ``instruction`` were handled. Broadcasts (SYNC_WRITE)
        get no status packet, so the host returns before the fake has applied them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(instruction) >= at_least:
                return True
            time.sleep(0.001)
        return False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> FakeFeetechBus:
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._thread = threading.Thread(target=self._serve, name="fake-feetech", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> FakeFeetechBus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- protocol ------------------------------------------------------------------------
    def _serve(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            r, _, _ = select.select([self._master], [], [], 0.02)
            if not r:
                continue
            try:
                chunk = os.read(self._master, 4096)
            except OSError:
                continue
            buf += chunk
            while True:
                packet = self._take_packet(buf)
                if packet is None:
                    break
                reply = self._handle(*packet)
                if reply and self.answering:
                    os.write(self._master, reply)

    def _take_packet(self, buf: bytearray) -> tuple[int, int, bytes] | None:
        while True:
            start = buf.find(b"\xff\xff")
            if start < 0:
                del buf[:-1]
                return None
            del buf[:start]
            if len(buf) < 4:
                return None
            if buf[2] == 0xFF:  # a third 0xFF: resync one byte later
                del buf[0]
                continue
            total = buf[3] + 4
            if buf[3] < 2:
                del buf[:2]
                continue
            if len(buf) < total:
                return None
            body, chk = bytes(buf[2:total - 1]), buf[total - 1]
            del buf[:total]
            if checksum(body) != chk:
                self.bad_checksums += 1
                continue
            return body[0], body[2], body[3:]

    @staticmethod
    def _status(motor_id: int, params: bytes = b"", error: int = 0) -> bytes:
        body = bytes([motor_id, len(params) + 2, error]) + params
        return b"\xff\xff" + body + bytes([checksum(body)])

    def _write_mem(self, m: Motor, addr: int, data: bytes) -> None:
        if addr <= PRESENT_POSITION[0] < addr + len(data):
            return  # read-only feedback registers are not written by the host
        m.mem[addr:addr + len(data)] = data
        if self.track_goal and m.mem[TORQUE_ENABLE[0]]:
            m.mem[PRESENT_POSITION[0]:PRESENT_POSITION[0] + 2] = \
                m.mem[GOAL_POSITION[0]:GOAL_POSITION[0] + 2]

    def _handle(self, motor_id: int, instr: int, params: bytes) -> bytes:
        with self._lock:
            self.log.append((instr, motor_id))
            if instr == SYNC_READ:
                addr, n, ids = params[0], params[1], params[2:]
                return b"".join(
                    self._status(i, bytes(self.motors[i].mem[addr:addr + n]))
                    for i in ids if i in self.motors
                )
            if instr == SYNC_WRITE:
                addr, n = params[0], params[1]
                rows = params[2:]
                for k in range(0, len(rows) - n, n + 1):
                    m = self.motors.get(rows[k])
                    if m is not None:
                        self._write_mem(m, addr, rows[k + 1:k + 1 + n])
                return b""
            targets = list(self.motors.values()) if motor_id == BROADCAST else (
                [self.motors[motor_id]] if motor_id in self.motors else [])
            for m in targets:
                if instr == WRITE:
                    self._write_mem(m, params[0], params[1:])
                elif instr == REG_WRITE:
                    m.pending = (params[0], params[1:])
                elif instr == ACTION and m.pending is not None:
                    self._write_mem(m, *m.pending)
                    m.pending = None
            if motor_id == BROADCAST or not targets:
                return b""  # no status for broadcasts; absent ids stay silent
            m = targets[0]
            if instr == READ:
                addr, n = params[0], params[1]
                return self._status(m.id, bytes(m.mem[addr:addr + n]))
            if instr in (PING, WRITE, REG_WRITE, ACTION):
                return self._status(m.id)
            return self._status(m.id, error=0x08)  # instruction error bit
