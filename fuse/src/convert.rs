//! Conversions between the kernel's view (modes, times, errnos) and the
//! metaserver's, and the permission check of access(2).

use super::*;

pub(crate) fn errno(err: &Error) -> Errno {
    Errno::from_i32(err.code.errno())
}

pub(crate) fn ino_of(ino: INodeNo) -> InodeId {
    InodeId(ino.0)
}

pub(crate) fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

pub(crate) fn ns_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos())
            .map(|ns| -ns)
            .unwrap_or(i64::MIN),
    }
}

pub(crate) fn set_time(time: Option<TimeOrNow>) -> Option<SetTime> {
    time.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(at) => SetTime::At(ns_of(at)),
    })
}

pub(crate) fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

pub(crate) fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino.0),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: time_of(attr.atime_ns),
        mtime: time_of(attr.mtime_ns),
        ctime: time_of(attr.ctime_ns),
        crtime: time_of(attr.ctime_ns),
        kind: file_type(attr.kind),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

pub(crate) fn attr_of(reply: MetaReply) -> Result<Attr, Error> {
    tessera_client::path::attr_of(reply)
}

pub(crate) fn name_of(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

pub(crate) fn kind_of_mode(mode: u32) -> Option<FileKind> {
    match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => Some(FileKind::File),
        libc::S_IFIFO => Some(FileKind::Fifo),
        libc::S_IFSOCK => Some(FileKind::Socket),
        libc::S_IFCHR => Some(FileKind::CharDevice),
        libc::S_IFBLK => Some(FileKind::BlockDevice),
        _ => None,
    }
}

pub(crate) fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// Mode-bit check for access(2): root may read and write anything and
/// execute what has any execute bit.
pub(crate) fn permitted(attr: &Attr, uid: u32, gid: u32, want: u32) -> bool {
    if want == 0 {
        return true;
    }
    if uid == 0 {
        let exec_ok = attr.kind == FileKind::Dir || attr.mode & 0o111 != 0;
        return want & 1 == 0 || exec_ok;
    }
    let bits = if attr.uid == uid {
        (attr.mode >> 6) & 0o7
    } else if attr.gid == gid {
        (attr.mode >> 3) & 0o7
    } else {
        attr.mode & 0o7
    };
    bits & want == want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_round_trip() {
        for ns in [0i64, 1, -1, 1_700_000_000_123_456_789, -86_400_000_000_007] {
            assert_eq!(ns_of(time_of(ns)), ns);
        }
    }

    #[test]
    fn access_follows_the_mode_bits() {
        let attr = Attr {
            ino: InodeId(5),
            kind: FileKind::File,
            mode: 0o640,
            uid: 10,
            gid: 20,
            size: 0,
            nlink: 1,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            rdev: 0,
            version: 1,
        };
        assert!(permitted(&attr, 10, 99, 6));
        assert!(permitted(&attr, 11, 20, 4));
        assert!(!permitted(&attr, 11, 20, 2));
        assert!(!permitted(&attr, 11, 21, 4));
        assert!(permitted(&attr, 0, 0, 6));
        assert!(!permitted(&attr, 0, 0, 1), "root needs some execute bit");
        assert!(permitted(&attr, 11, 21, 0));
    }
}
