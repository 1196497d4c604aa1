//! `ourkv completions` and `ourkv man`: shell completions and man pages,
//! generated from the clap definitions in `cli.rs` (never kept by hand).

use std::path::Path;

use anyhow::{Context, Result};

/// Writes the completion script for `shell` to standard output.
pub(crate) fn completions(shell: clap_complete::Shell) {
    let mut cmd = crate::config::command();
    clap_complete::generate(shell, &mut cmd, "ourkv", &mut std::io::stdout());
}

/// Writes `ourkv.1` and a page per subcommand (`ourkv-db-dump.1`, …) into
/// `out`; returns how many pages.
pub(crate) fn man_pages(out: &Path) -> Result<usize> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    clap_mangen::generate_to(crate::config::command(), out)
        .with_context(|| format!("write man pages to {}", out.display()))?;
    let pages = std::fs::read_dir(out)
        .with_context(|| format!("list {}", out.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count();
    Ok(pages)
}
