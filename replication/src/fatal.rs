//! What the process does when a store fails a commit for good (a full or
//! failing disk): by default nothing beyond refusing writes, as a library
//! should; the `ourkv` binary exits, so that another member takes over and
//! a supervisor's restart reopens the store (the only way past a failed
//! fsync: what the page cache holds can no longer be trusted).

use std::sync::OnceLock;

type Hook = Box<dyn Fn(&str) + Send + Sync>;

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Runs `f` with the reason when a store of this process fails a commit.
/// The first call sets it; later calls change nothing.
pub fn on_store_failure(f: impl Fn(&str) + Send + Sync + 'static) {
    let _ = HOOK.set(Box::new(f));
}

/// A store failed a commit and takes no more writes.
pub(crate) fn store_failed(why: &str) {
    if let Some(f) = HOOK.get() {
        f(why);
    }
}
