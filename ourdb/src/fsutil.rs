//! Small file-system helpers shared by the engine's writers, over [`Storage`].

use std::path::Path;

use crate::error::{IoContext, Result};
use crate::storage::{Open, Storage};

/// fsyncs a directory so that renames and creations in it are durable. The
/// empty path (the parent of a bare relative name) is the current directory.
pub(crate) fn sync_dir(io: &dyn Storage, dir: &Path) -> Result<()> {
    io.sync_dir(dir)
        .ctx(|| format!("fsync directory {}", dir.display()))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new
/// contents: write a temp file beside it, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(io: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!("{name}.tmp"));
    {
        let f = io
            .open(&tmp, Open::CreateTruncate)
            .ctx(|| format!("create {}", tmp.display()))?;
        f.write_at(bytes, 0)
            .ctx(|| format!("write {}", tmp.display()))?;
        f.sync_data().ctx(|| format!("fsync {}", tmp.display()))?;
    }
    io.rename(&tmp, path)
        .ctx(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    if let Some(parent) = path.parent() {
        sync_dir(io, parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::RealStorage;

    #[test]
    fn parent_of_a_bare_name_is_the_current_directory() {
        // `Path::new("db").parent()` is `Some("")`: compact and snapshot
        // swaps of a relative directory fsync it.
        let parent = Path::new("db").parent().unwrap();
        assert_eq!(parent, Path::new(""));
        sync_dir(&RealStorage, parent).unwrap();
    }
}
