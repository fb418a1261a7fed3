//! What the source-reading tests (`layers.rs`, `shape.rs`) share.

use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir`, into `out`.
pub fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
