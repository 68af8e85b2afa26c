//! Replacing a file atomically: write a temporary file in the same
//! directory, flush it to disk, then rename it over the target.
//!
//! Owns: [`write_atomic`]. Must never: leave the target half written (a
//! proxy reloading its policy reads the old file or the new one, never a
//! mix or a prefix).

use std::io::Write;
use std::path::Path;

/// Replace `path` with `bytes` atomically (same-directory temporary file,
/// `fsync`, `rename`). The temporary file is removed on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_reader_sees_the_old_file_or_the_new_one_never_a_prefix() {
        let dir = std::env::temp_dir().join(format!("chokepoint-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy-policy.yaml");
        write_atomic(&path, b"version: v1\n# old\n").unwrap();
        // A reader that opened the file before the write keeps reading the
        // old content in full: the new one arrived by rename, not in place.
        let mut held = std::fs::File::open(&path).unwrap();
        write_atomic(&path, b"version: v1\n# new, longer than the old one\n").unwrap();
        let mut old = String::new();
        held.read_to_string(&mut old).unwrap();
        assert_eq!(old, "version: v1\n# old\n");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "version: v1\n# new, longer than the old one\n"
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "a temporary file was left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
