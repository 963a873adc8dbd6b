//! Snapshots: a RocksDB checkpoint (hard links to the database's files, so
//! taking one costs about the same at a thousand files as at a billion),
//! streamed record by record into a file only when a member needs it, sent
//! in chunks by openraft, and written into the receiver's store in batches.
//! At no point is the state held in memory, so a snapshot costs disk and
//! time, not RAM.
//!
//! File layout: `MAGIC`, then per record a little-endian `u32` key length,
//! `u32` value length, key, value; then `u32::MAX` and the BLAKE3 hash of
//! everything before it. A received file is verified whole before anything
//! is replaced.
//!
//! Installing replaces the column family in several batches, so it is made
//! restartable rather than atomic: the file's path is recorded (synced)
//! under [`KEY_INSTALLING`] before the first change and removed with the
//! last, and a start that finds the record installs the file again.

use rocksdb::{DB, WriteBatch, WriteOptions};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TSNAP\0\0\x01";
const END: u32 = u32::MAX;
/// Bytes of records per write batch while installing.
const INSTALL_BATCH_BYTES: usize = 8 << 20;
/// Where an install in progress records its file (in the Raft column
/// family, which a snapshot does not replace).
pub const KEY_INSTALLING: &[u8] = b"installing-snapshot";

fn io(what: &str, path: &Path, err: impl std::fmt::Display) -> String {
    format!("{what} {}: {err}", path.display())
}

/// Writes every record of `cf`, as one view of the database sees it, to
/// `path` (through a temporary file, synced, then renamed). Returns the
/// number of records and the value of `key` in that view.
pub fn write(db: &DB, cf: &str, path: &Path, key: &[u8]) -> Result<(u64, Option<Vec<u8>>), String> {
    let handle = db
        .cf_handle(cf)
        .ok_or_else(|| format!("column family {cf} is missing"))?;
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut put = |bytes: &[u8], out: &mut BufWriter<File>| -> Result<(), String> {
        hasher.update(bytes);
        out.write_all(bytes).map_err(|e| io("write", &tmp, e))
    };
    put(MAGIC, &mut out)?;
    let view = db.snapshot();
    let mut count = 0u64;
    let mut wanted = None;
    for item in view.iterator_cf(handle, rocksdb::IteratorMode::Start) {
        let (record_key, value) =
            item.map_err(|e| format!("read the state for a snapshot: {e}"))?;
        if *record_key == *key {
            wanted = Some(value.to_vec());
        }
        let key = record_key;
        let key_len = u32::try_from(key.len()).map_err(|_| "a key over 4 GiB")?;
        let value_len = u32::try_from(value.len()).map_err(|_| "a value over 4 GiB")?;
        put(&key_len.to_le_bytes(), &mut out)?;
        put(&value_len.to_le_bytes(), &mut out)?;
        put(&key, &mut out)?;
        put(&value, &mut out)?;
        count += 1;
    }
    put(&END.to_le_bytes(), &mut out)?;
    let hash = hasher.finalize();
    out.write_all(hash.as_bytes())
        .map_err(|e| io("write", &tmp, e))?;
    let file = out.into_inner().map_err(|e| io("write", &tmp, e))?;
    file.sync_all().map_err(|e| io("sync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", &tmp, e))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync", dir, e))?;
    }
    Ok((count, wanted))
}

/// Takes a checkpoint of `db` into `dir` (which must not exist) and
/// returns the value of `key` in `cf` as the checkpoint holds it.
pub fn checkpoint(
    db: &DB,
    dir: &Path,
    cfs: &[&str],
    cf: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, String> {
    rocksdb::checkpoint::Checkpoint::new(db)
        .and_then(|c| c.create_checkpoint(dir))
        .map_err(|e| io("take a checkpoint in", dir, e))?;
    let copy = open_checkpoint(dir, cfs)?;
    let handle = copy
        .cf_handle(cf)
        .ok_or_else(|| format!("column family {cf} is missing"))?;
    copy.get_cf(handle, key)
        .map_err(|e| io("read the checkpoint in", dir, e))
}

fn open_checkpoint(dir: &Path, cfs: &[&str]) -> Result<DB, String> {
    DB::open_cf_for_read_only(
        &rocksdb::Options::default(),
        dir,
        cfs.iter().copied(),
        false,
    )
    .map_err(|e| io("open the checkpoint in", dir, e))
}

/// Streams the records of `cf` in the checkpoint at `dir` into the file
/// `path`.
pub fn stream_checkpoint(dir: &Path, cfs: &[&str], cf: &str, path: &Path) -> Result<u64, String> {
    let copy = open_checkpoint(dir, cfs)?;
    write(&copy, cf, path, &[]).map(|(count, _)| count)
}

/// Reads the records of a snapshot file in order, calling `each` for every
/// one; fails on any framing error or a hash that does not match (after
/// `each` has seen the records, so callers verify before they change
/// anything).
fn read(
    path: &Path,
    mut each: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
) -> Result<u64, String> {
    let file = File::open(path).map_err(|e| io("open", path, e))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut take = |len: usize, input: &mut BufReader<File>| -> Result<Vec<u8>, String> {
        let mut bytes = vec![0; len];
        input
            .read_exact(&mut bytes)
            .map_err(|e| io("read the snapshot", path, e))?;
        hasher.update(&bytes);
        Ok(bytes)
    };
    if take(MAGIC.len(), &mut input)? != MAGIC {
        return Err(format!("{} is not a Tessera snapshot", path.display()));
    }
    let mut count = 0u64;
    loop {
        let len =
            |bytes: Vec<u8>| -> u32 { u32::from_le_bytes(bytes.try_into().unwrap_or([0xff; 4])) };
        let key_len = len(take(4, &mut input)?);
        if key_len == END {
            break;
        }
        let value_len = len(take(4, &mut input)?);
        let key = take(key_len as usize, &mut input)?;
        let value = take(value_len as usize, &mut input)?;
        each(&key, &value)?;
        count += 1;
    }
    let expected = hasher.finalize();
    let mut stored = [0u8; 32];
    input
        .read_exact(&mut stored)
        .map_err(|e| io("read the snapshot hash of", path, e))?;
    if expected.as_bytes() != &stored {
        return Err(format!(
            "{} is damaged (its hash does not match)",
            path.display()
        ));
    }
    Ok(count)
}

/// Checks a snapshot file whole: framing, hash, and that it holds `key`.
pub fn verify(path: &Path, key: &[u8]) -> Result<u64, String> {
    let mut found = false;
    let count = read(path, |k, _| {
        found |= k == key;
        Ok(())
    })?;
    if !found {
        return Err(format!(
            "{} holds no {:?} record",
            path.display(),
            key.escape_ascii().to_string()
        ));
    }
    Ok(count)
}

/// Replaces every record of `cf` with the file's (verified first). The
/// record `last` (the applied index) is written in the final batch, so the
/// state never claims an index its records do not reach.
pub fn install(
    db: &DB,
    cf: &str,
    marker_cf: &str,
    path: &Path,
    last: &[u8],
) -> Result<u64, String> {
    verify(path, last)?;
    let handle = db
        .cf_handle(cf)
        .ok_or_else(|| format!("column family {cf} is missing"))?;
    let marker = db
        .cf_handle(marker_cf)
        .ok_or_else(|| format!("column family {marker_cf} is missing"))?;
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    let path_bytes = path.to_string_lossy().as_bytes().to_vec();
    db.put_cf_opt(marker, KEY_INSTALLING, &path_bytes, &synced)
        .map_err(|e| format!("record the snapshot install: {e}"))?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(handle, [0u8].as_slice(), [0xffu8; 64].as_slice());
    batch.delete_cf(handle, []);
    let mut bytes = 0usize;
    let mut last_value = None;
    let plain = WriteOptions::default();
    let count = read(path, |key, value| {
        if key == last {
            last_value = Some(value.to_vec());
            return Ok(());
        }
        batch.put_cf(handle, key, value);
        bytes += key.len() + value.len();
        if bytes >= INSTALL_BATCH_BYTES {
            db.write_opt(std::mem::take(&mut batch), &plain)
                .map_err(|e| format!("write the snapshot: {e}"))?;
            bytes = 0;
        }
        Ok(())
    })?;
    let last_value = last_value.ok_or("the snapshot lost its applied record")?;
    batch.put_cf(handle, last, last_value);
    batch.delete_cf(marker, KEY_INSTALLING);
    db.write_opt(batch, &synced)
        .map_err(|e| format!("write the snapshot: {e}"))?;
    Ok(count)
}

/// The file of an install a crash interrupted, if any.
pub fn interrupted(db: &DB, marker_cf: &str) -> Result<Option<PathBuf>, String> {
    let marker = db
        .cf_handle(marker_cf)
        .ok_or_else(|| format!("column family {marker_cf} is missing"))?;
    Ok(db
        .get_cf(marker, KEY_INSTALLING)
        .map_err(|e| format!("read the snapshot install record: {e}"))?
        .map(|bytes| PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_file_round_trips_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = DB::open_cf(&options, dir.path().join("a"), ["state", "raft"]).unwrap();
        let cf = db.cf_handle("state").unwrap();
        for i in 0u32..5000 {
            db.put_cf(cf, i.to_be_bytes(), vec![i as u8; 300]).unwrap();
        }
        db.put_cf(cf, b"applied", b"7").unwrap();
        let path = dir.path().join("s.snap");
        let cp = dir.path().join("cp");
        let applied = checkpoint(&db, &cp, &["state", "raft"], "state", b"applied").unwrap();
        assert_eq!(applied, Some(b"7".to_vec()));
        // Changes after the checkpoint are not in it.
        db.put_cf(cf, b"later", b"x").unwrap();
        let count = stream_checkpoint(&cp, &["state", "raft"], "state", &path).unwrap();
        assert_eq!(count, 5001);

        let other = DB::open_cf(&options, dir.path().join("b"), ["state", "raft"]).unwrap();
        let ocf = other.cf_handle("state").unwrap();
        other.put_cf(ocf, b"stale", b"x").unwrap();
        assert_eq!(
            install(&other, "state", "raft", &path, b"applied").unwrap(),
            5001
        );
        assert_eq!(other.get_cf(ocf, b"stale").unwrap(), None);
        assert_eq!(other.get_cf(ocf, b"applied").unwrap(), Some(b"7".to_vec()));
        assert_eq!(
            other.get_cf(ocf, 4999u32.to_be_bytes()).unwrap(),
            Some(vec![4999u32 as u8; 300])
        );
        assert_eq!(interrupted(&other, "raft").unwrap(), None);

        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        let damaged = dir.path().join("d.snap");
        std::fs::write(&damaged, &bytes).unwrap();
        assert!(verify(&damaged, b"applied").is_err());
        assert!(install(&other, "state", "raft", &damaged, b"applied").is_err());
        assert_eq!(other.get_cf(ocf, b"applied").unwrap(), Some(b"7".to_vec()));
        std::fs::write(&damaged, &bytes[..middle]).unwrap();
        assert!(verify(&damaged, b"applied").is_err());
    }
}
