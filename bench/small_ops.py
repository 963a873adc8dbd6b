"""Small operations on one directory, one process, one file at a time: what
an unpack, a build or a mail spool does. Prints one `name value unit` line
per figure (rates are per second; workloads are seconds).

usage: small_ops.py DIR FILES [--workloads TARBALL SOURCE]

DIR must be empty or absent. Caches are dropped before the cold read (root
only), so the reads come from the filesystem's servers, not memory.
"""
import os
import shutil
import sqlite3
import subprocess
import sys
import time


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rate(name, count, seconds):
    print(f"{name} {count / seconds:.0f} ops/s", flush=True)


def micro(root, files):
    d = os.path.join(root, "micro")
    os.mkdir(d)
    names = [os.path.join(d, f"f{i:06d}") for i in range(files)]

    def create():
        for n in names:
            os.close(os.open(n, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))

    rate("create", files, timed(create))
    drop_caches()
    rate("stat", files, timed(lambda: [os.stat(n) for n in names]))
    renamed = [n + ".r" for n in names]
    rate("rename", files, timed(lambda: [os.rename(a, b) for a, b in zip(names, renamed)]))
    rate("unlink", files, timed(lambda: [os.unlink(n) for n in renamed]))

    block = os.urandom(4096)

    def write_files():
        for n in names:
            fd = os.open(n, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, block)
            os.close(fd)

    rate("write_4k_files", files, timed(write_files))
    drop_caches()

    def read_files():
        for n in names:
            with open(n, "rb") as f:
                if len(f.read()) != 4096:
                    raise SystemExit(f"{n}: short read")

    rate("read_4k_files_cold", files, timed(read_files))
    synced = max(files // 10, 50)

    def write_fsync():
        for i in range(synced):
            fd = os.open(os.path.join(d, f"s{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, block)
            os.fsync(fd)
            os.close(fd)

    rate("write_4k_fsync", synced, timed(write_fsync))
    shutil.rmtree(d)


def run(args, cwd):
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def workloads(root, tarball, source):
    d = os.path.join(root, "work")
    os.mkdir(d)
    print(f"untar {timed(lambda: run(['tar', 'xf', tarball], d)):.2f} s", flush=True)
    top = os.path.join(d, os.path.basename(source.rstrip('/')))
    print(f"diff {timed(lambda: run(['diff', '-r', '--no-dereference', source, top], d)):.2f} s", flush=True)

    def git():
        env = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        run(env + ["init", "-q"], top)
        run(env + ["add", "-A"], top)
        run(env + ["commit", "-q", "-m", "tree"], top)
        run(env + ["gc", "-q"], top)

    print(f"git {timed(git):.2f} s", flush=True)

    def sqlite():
        c = sqlite3.connect(os.path.join(d, "bench.db"), isolation_level=None)
        c.execute("pragma journal_mode=delete")
        c.execute("create table t(a integer, b text)")
        for i in range(200):
            c.execute("begin")
            for j in range(50):
                c.execute("insert into t values (?, ?)", (i * 50 + j, "x" * 100))
            c.execute("commit")
        c.close()

    print(f"sqlite {timed(sqlite):.2f} s", flush=True)
    print(f"rm {timed(lambda: shutil.rmtree(d)):.2f} s", flush=True)


def main():
    root, files = sys.argv[1], int(sys.argv[2])
    os.makedirs(root, exist_ok=True)
    micro(root, files)
    if len(sys.argv) > 3 and sys.argv[3] == "--workloads":
        workloads(root, sys.argv[4], sys.argv[5])


main()
