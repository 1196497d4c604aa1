//! Progress of long `ourkv db` runs: a bar (indicatif) when stderr is a
//! terminal, info log lines at every tenth otherwise (so logs of a service
//! manager get a few lines, not a bar's redraws).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use ourdb::tools::Progress;

/// The progress reporter for `task` (`verify`, `compact`, …).
pub(crate) fn for_task(task: &'static str) -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bar {
            task,
            bar: Mutex::new(None),
        })
    } else {
        Box::new(LogLines {
            task,
            phase: Mutex::new(String::new()),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            logged_tenths: AtomicU64::new(0),
        })
    }
}

/// One bar per phase, on stderr.
struct Bar {
    task: &'static str,
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        let bar = if total == 0 {
            ProgressBar::new_spinner()
                .with_style(ProgressStyle::with_template("{prefix} {spinner} {pos} {msg}").unwrap())
        } else {
            ProgressBar::new(total).with_style(
                ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {msg} ({eta})")
                    .unwrap()
                    .progress_chars("=> "),
            )
        };
        bar.set_prefix(self.task);
        bar.set_message(phase.to_string());
        let mut slot = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.replace(bar) {
            old.finish();
        }
    }

    fn advance(&self, n: u64) {
        if let Some(b) = &*self.bar.lock().unwrap_or_else(|e| e.into_inner()) {
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            b.finish();
        }
    }
}

/// Info lines at 0%, every further 10% and at the end of each phase.
struct LogLines {
    task: &'static str,
    phase: Mutex<String>,
    total: AtomicU64,
    done: AtomicU64,
    logged_tenths: AtomicU64,
}

impl Progress for LogLines {
    fn start(&self, phase: &str, total: u64) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase.to_string();
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.logged_tenths.store(0, Ordering::Relaxed);
        tracing::info!("{}: {phase}: 0 of {total}", self.task);
    }

    fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let total = self.total.load(Ordering::Relaxed);
        if total == 0 {
            // Unknown total: a line every 100,000 units.
            if done / 100_000 > (done - n) / 100_000 {
                let phase = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
                tracing::info!("{}: {phase}: {done}", self.task);
            }
            return;
        }
        let tenths = done.saturating_mul(10) / total;
        if tenths > self.logged_tenths.fetch_max(tenths, Ordering::Relaxed) {
            let phase = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
            tracing::info!(
                "{}: {phase}: {done} of {total} ({}%)",
                self.task,
                tenths * 10
            );
        }
    }

    fn finish(&self) {
        let phase = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        tracing::info!(
            "{}: {phase}: done ({})",
            self.task,
            self.done.load(Ordering::Relaxed)
        );
    }
}
