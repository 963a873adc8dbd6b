"""One sqlite writer for the two-mount test: TXNS transactions, each
inserting one row and bumping a shared counter, on DB (rollback journal,
so sqlite's fcntl locks are all that keep writers apart).

usage: sqlite_writer.py DB WRITER TXNS
"""
import sqlite3
import sys
import time

db, writer, txns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# isolation_level=None: transactions are begun and committed here.
conn = sqlite3.connect(db, timeout=120, isolation_level=None)
conn.execute("pragma journal_mode=delete")
done = 0
while done < txns:
    try:
        conn.execute("begin immediate")
        conn.execute("insert into rows(writer, seq) values (?, ?)", (writer, done))
        conn.execute("update counter set n = n + 1")
        conn.execute("commit")
        done += 1
    except sqlite3.OperationalError as e:
        # Busy past the timeout: roll back and try the same transaction.
        if "locked" not in str(e) and "busy" not in str(e):
            raise
        try:
            conn.execute("rollback")
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
conn.close()
print("ok", done)
