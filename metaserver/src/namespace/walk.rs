//! What a whole-namespace reader such as `tessera admin fsck` needs: every
//! extent in key order a page at a time (so the caller can let go of the
//! state between pages), and a path for an inode found from its parent
//! pointers. Read-only; never on an operation's path.

use super::*;

/// Deepest path `path_of` follows before giving up (a loop would be a
/// corrupt store; the whole-store check reports those).
const PATH_DEPTH_MAX: usize = 4096;

impl Namespace {
    /// Extents of every file after `after` (inode, offset), at most
    /// `limit`, in inode then offset order.
    pub fn extents_after(
        &self,
        after: Option<(InodeId, u64)>,
        limit: usize,
    ) -> Vec<(InodeId, Extent)> {
        let from = match after {
            Some((ino, offset)) => {
                let mut key = extent_key(ino, offset);
                key.push(0);
                key
            }
            None => PREFIX_EXTENT.to_vec(),
        };
        self.kv
            .scan(&from, &prefix_end(PREFIX_EXTENT), limit)
            .into_iter()
            .filter_map(|(key, value)| {
                let ino = InodeId(key_number(&key, 2)?);
                Some((ino, self.extent_record(&key, &value)?))
            })
            .collect()
    }

    /// A path to `ino` through the directory each inode is counted under.
    /// Finding a name means scanning its parent's entries, so at most
    /// `budget` entries are read in all; past that, or for an inode counted
    /// nowhere (unlinked, kept by open handles), the answer is `None`.
    pub fn path_of(&self, ino: InodeId, budget: usize) -> Option<String> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut at = ino;
        let mut left = budget;
        while at != InodeId::ROOT {
            if names.len() >= PATH_DEPTH_MAX {
                return None;
            }
            let parent = self.get_node(at)?.parent;
            if parent.0 == 0 {
                return None;
            }
            names.push(self.name_in(parent, at, &mut left)?);
            at = parent;
        }
        let mut path = String::new();
        for name in names.iter().rev() {
            path.push('/');
            path.push_str(&String::from_utf8_lossy(name));
        }
        if path.is_empty() {
            path.push('/');
        }
        Some(path)
    }

    pub(super) fn name_in(
        &self,
        parent: InodeId,
        child: InodeId,
        left: &mut usize,
    ) -> Option<Vec<u8>> {
        const PAGE: usize = 1024;
        let prefix = dirent_prefix(parent);
        let end = prefix_end(&prefix);
        let mut from = prefix.clone();
        while *left > 0 {
            let want = PAGE.min(*left);
            let page = self.kv.scan(&from, &end, want);
            for (key, value) in &page {
                *left -= 1;
                if self
                    .decoded::<DirentRecord>(key, value)
                    .is_some_and(|record| record.ino == child)
                {
                    return key.get(prefix.len()..).map(<[u8]>::to_vec);
                }
            }
            let (last, _) = page.last()?;
            if page.len() < want {
                return None;
            }
            from = last.clone();
            from.push(0);
        }
        None
    }
}
