"""One lock owner for the lock tests: reads commands on stdin, answers one
line each on stdout. A process is a POSIX lock owner; each `open` is an
open file description (a flock owner).

  open PATH            -> ok FD
  close FD             -> ok
  lock FD r|w|u START LEN wait|nowait -> ok | err ERRNO
  getlk FD r|w START LEN -> free | held r|w START LEN PID
  flock FD sh|ex|un wait|nowait -> ok | err ERRNO
  alarm SECONDS        -> ok (a signal interrupts the next blocking call)
  pid                  -> ok PID
"""
import errno
import fcntl
import os
import signal
import struct
import sys


class Alarm(Exception):
    pass


def on_alarm(_signum, _frame):
    raise Alarm()


signal.signal(signal.SIGALRM, on_alarm)
TYPES = {"r": fcntl.F_RDLCK, "w": fcntl.F_WRLCK, "u": fcntl.F_UNLCK}
NAMES = {fcntl.F_RDLCK: "r", fcntl.F_WRLCK: "w"}
FLOCK = "hhqqixxxx"


def answer(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run(words):
    cmd = words[0]
    if cmd == "open":
        return "ok %d" % os.open(words[1], os.O_RDWR | os.O_CREAT, 0o644)
    if cmd == "close":
        os.close(int(words[1]))
        return "ok"
    if cmd == "pid":
        return "ok %d" % os.getpid()
    if cmd == "alarm":
        signal.setitimer(signal.ITIMER_REAL, float(words[1]))
        return "ok"
    if cmd == "lock":
        fd, typ, start, length, mode = int(words[1]), TYPES[words[2]], int(words[3]), int(words[4]), words[5]
        op = fcntl.F_SETLKW if mode == "wait" else fcntl.F_SETLK
        fcntl.fcntl(fd, op, struct.pack(FLOCK, typ, os.SEEK_SET, start, length, 0))
        return "ok"
    if cmd == "getlk":
        fd, typ, start, length = int(words[1]), TYPES[words[2]], int(words[3]), int(words[4])
        out = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(FLOCK, typ, os.SEEK_SET, start, length, 0))
        typ, _, start, length, pid = struct.unpack(FLOCK, out)
        if typ == fcntl.F_UNLCK:
            return "free"
        return "held %s %d %d %d" % (NAMES[typ], start, length, pid)
    if cmd == "flock":
        fd, what, mode = int(words[1]), words[2], words[3]
        op = {"sh": fcntl.LOCK_SH, "ex": fcntl.LOCK_EX, "un": fcntl.LOCK_UN}[what]
        if mode == "nowait":
            op |= fcntl.LOCK_NB
        fcntl.flock(fd, op)
        return "ok"
    return "err unknown-command"


for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    try:
        result = run(words)
    except Alarm:
        result = "err %d" % errno.EINTR
    except OSError as e:
        result = "err %d" % e.errno
    finally:
        if words[0] != "alarm":
            signal.setitimer(signal.ITIMER_REAL, 0)
    answer(result)
