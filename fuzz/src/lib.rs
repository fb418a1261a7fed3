//! Fuzz properties of the okta-dcr-auth core, one module per `cargo fuzz` target.
//!
//! Each module's `check(data)` reads the fuzzer's bytes in a documented, human-writable format
//! and panics when a property fails; `fuzz_targets/<target>.rs` only calls it. Keeping the
//! checks here lets `cargo test` (stable, no libFuzzer) replay `corpus/` and `regressions/`
//! through exactly what the fuzzer runs: see `tests` below.

pub mod authorization;
pub mod cache_entry;
pub mod config;
pub mod form_decode;
pub mod jwt;
pub mod okta_answers;
pub mod registrations;

/// A target's property check: panics when a property fails.
pub type Check = fn(&[u8]);

/// The targets, by name, as `cargo fuzz list` prints them.
pub const TARGETS: [(&str, Check); 7] = [
    ("authorization", authorization::check),
    ("form_decode", form_decode::check),
    ("okta_answers", okta_answers::check),
    ("cache_entry", cache_entry::check),
    ("config", config::check),
    ("jwt", jwt::check),
    ("registrations", registrations::check),
];

/// Whether to check `property`. `FUZZ_IGNORE=a,b` (never set by `make fuzz`) skips the named
/// properties, so that fuzzing can go on past a violation that is reported and not fixed yet:
/// `FUZZ_IGNORE=grant-header-safe cargo +nightly fuzz run okta_answers`. The names are the
/// first argument of every `checked(..)` call.
pub fn checked(property: &str) -> bool {
    static IGNORED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    !IGNORED
        .get_or_init(|| {
            std::env::var("FUZZ_IGNORE")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|p| p == property)
}

/// What the filter may put in a header value or a log line: no control characters (the
/// definition `credentials::form_decode` and `okta::read_introspection` already use).
pub fn header_safe(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        out.retain(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        });
        out.sort();
        out
    }

    /// Every committed seed passes its target's properties (a seed that fails is a bug in the
    /// core or in the seed, and the fuzzer would stop on it at once).
    #[test]
    fn seed_corpora_hold_the_properties() {
        for (target, check) in super::TARGETS {
            let seeds = files(&dir("corpus").join(target));
            assert!(!seeds.is_empty(), "no seeds in corpus/{target}");
            for seed in seeds {
                let data = std::fs::read(&seed).unwrap();
                eprintln!("{target}: {}", seed.display());
                check(&data);
            }
        }
    }

    /// Every input the fuzzer ever failed on, kept as `regressions/<target>-<name>`, now passes.
    #[test]
    fn regressions_hold_the_properties() {
        let mut failed = Vec::new();
        for file in files(&dir("regressions")) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let Some((_, check)) = super::TARGETS
                .iter()
                .find(|(t, _)| name.starts_with(&format!("{t}-")))
            else {
                panic!("regressions/{name}: not named <target>-<name>");
            };
            let data = std::fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(name);
            }
        }
        assert!(failed.is_empty(), "regressions still failing: {failed:?}");
    }
}
