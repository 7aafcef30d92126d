//! Choices made by timing, kept in a file (`CASCADE_TUNING_FILE`,
//! [`super::CudaDevice::set_tuning_file`]).
//!
//! A process times cuBLASLt's candidate algorithms for every GEMM shape it meets (and, under
//! `CASCADE_KERNEL_TUNE`, the engine's candidate kernels). That costs start-up time, and
//! near-ties can fall either way in different processes, so two processes may run a step with
//! different algorithms (different split-K reductions, different graph node counts). A tuning
//! file keeps each choice once made: a later process on the same card, driver, cuBLASLt and
//! engine version reads it and times only the shapes it does not hold, so its steps run the
//! same algorithms, and A/B measurements across processes compare like with like.
//!
//! The file is text, one `key = value` per line:
//! - `for = <fingerprint>`: the card (name, compute capability, SMs), the driver's and cuBLASLt's
//!   versions and the engine's. A file made for another fingerprint is not used: its entries are
//!   dropped (with a warning) and the file is rewritten with this process's choices.
//! - `gemm <shape, types, epilogue, alignment, strides> = <algorithm>`: cuBLASLt's algorithm,
//!   its opaque 64-byte description in hex (cuBLASLt documents it as serialisable for reuse
//!   with the same library version). It is used only when the heuristic still offers exactly
//!   that algorithm for the shape; otherwise the shape is timed again.
//! - `kernel <site> <shape> = <candidate name>`: a kernel choice, by name, so that adding or
//!   reordering candidates cannot misread it.
//!
//! The file is rewritten (through a temporary file and a rename, so a reader never sees half of
//! it) after each new choice, with the entries other users of the file wrote meanwhile merged in; choices happen at start-up and on new shapes, never in a steady
//! step loop. Failing to write it costs nothing but the saving: one warning, and the engine
//! goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{Error, Result};

/// The file's first line.
const HEADER: &str = "# cascade tuning file: choices made by timing, reused while `for` matches this process";

struct State {
    path: PathBuf,
    entries: BTreeMap<String, String>,
    /// A write already failed (warned once).
    write_failed: bool,
}

/// The tuning file of one device, if any.
pub(crate) struct TuningFile {
    fingerprint: String,
    state: Mutex<Option<State>>,
}

impl TuningFile {
    /// No file yet; `fingerprint` describes the device and libraries choices are valid for.
    pub(crate) fn new(fingerprint: String) -> TuningFile {
        TuningFile { fingerprint, state: Mutex::new(None) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<State>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Uses `path` from now on (None: no file). An absent file is created at the first choice;
    /// an unreadable or malformed one is an error and leaves the previous setting. One made for
    /// another fingerprint is not used and will be rewritten (warned on stderr).
    pub(crate) fn open(&self, path: Option<&Path>) -> Result<()> {
        let Some(path) = path else {
            *self.lock() = None;
            return Ok(());
        };
        let entries = match std::fs::read_to_string(path) {
            Ok(text) => {
                let (fingerprint, entries) = parse(&text).map_err(|msg| Error::File { path: path.to_path_buf(), msg })?;
                if fingerprint.as_deref() == Some(self.fingerprint.as_str()) {
                    entries
                } else {
                    eprintln!(
                        "warning: the tuning file {} was made for {}; this is {}: its choices are not used, and it will be rewritten",
                        path.display(),
                        fingerprint.as_deref().unwrap_or("an unnamed device"),
                        self.fingerprint
                    );
                    BTreeMap::new()
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::File { path: path.to_path_buf(), msg: format!("cannot read the tuning file: {e}") }),
        };
        *self.lock() = Some(State { path: path.to_path_buf(), entries, write_failed: false });
        Ok(())
    }

    /// The file in use.
    pub(crate) fn path(&self) -> Option<PathBuf> {
        self.lock().as_ref().map(|s| s.path.clone())
    }

    /// The value kept for `key`.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.lock().as_ref().and_then(|s| s.entries.get(key).cloned())
    }

    /// Keeps `value` for `key` and rewrites the file (nothing without a file).
    pub(crate) fn set(&self, key: String, value: String) {
        let mut guard = self.lock();
        let Some(state) = guard.as_mut() else { return };
        if state.entries.get(&key) == Some(&value) {
            return;
        }
        state.entries.insert(key, value);
        // Entries another process (or another device of this one) wrote since this file was
        // read are kept: merged in, this process's own winning where both chose.
        if let Ok((Some(fingerprint), theirs)) = std::fs::read_to_string(&state.path).map_err(|_| String::new()).and_then(|t| parse(&t)) {
            if fingerprint == self.fingerprint {
                for (k, v) in theirs {
                    state.entries.entry(k).or_insert(v);
                }
            }
        }
        if let Err(e) = write(&state.path, &self.fingerprint, &state.entries) {
            if !state.write_failed {
                eprintln!("warning: cannot write the tuning file {}: {e}; its choices will not be kept", state.path.display());
                state.write_failed = true;
            }
        }
    }
}

/// The fingerprint line's value and the entries of a tuning file's text.
fn parse(text: &str) -> std::result::Result<(Option<String>, BTreeMap<String, String>), String> {
    let mut fingerprint = None;
    let mut entries = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else {
            return Err(format!("line {}: expected `key = value`, found {line:?} (not a cascade tuning file?)", i + 1));
        };
        let (key, value) = (key.trim(), value.trim());
        if key == "for" {
            fingerprint = Some(value.to_string());
        } else if key.starts_with("gemm ") || key.starts_with("kernel ") {
            entries.insert(key.to_string(), value.to_string());
        } else {
            return Err(format!("line {}: unknown entry {key:?} (expected `for`, `gemm …` or `kernel …`)", i + 1));
        }
    }
    Ok((fingerprint, entries))
}

fn write(path: &Path, fingerprint: &str, entries: &BTreeMap<String, String>) -> std::io::Result<()> {
    let mut text = format!("{HEADER}\nfor = {fingerprint}\n");
    for (k, v) in entries {
        text.push_str(&format!("{k} = {v}\n"));
    }
    // A name of its own per write: two devices of one process may share the file.
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A cuBLASLt algorithm's description as the file writes it.
pub(crate) fn algo_hex(data: &[u64; 8]) -> String {
    data.iter().map(|w| format!("{w:016x}")).collect::<Vec<_>>().join(" ")
}

/// The inverse of [`algo_hex`]; None for anything else.
pub(crate) fn parse_algo_hex(s: &str) -> Option<[u64; 8]> {
    let words: Vec<u64> = s.split_whitespace().map(|w| u64::from_str_radix(w, 16)).collect::<std::result::Result<_, _>>().ok()?;
    words.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cascade-tuning-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        dir
    }

    #[test]
    fn choices_are_kept_and_read_back_for_the_same_fingerprint_only() {
        let path = temp("roundtrip");
        let a = TuningFile::new("card A".into());
        a.open(Some(&path)).unwrap();
        assert_eq!(a.path().as_deref(), Some(path.as_path()));
        a.set("gemm 1x2x3".into(), algo_hex(&[1, 2, 3, 4, 5, 6, 7, u64::MAX]));
        a.set("kernel fc2 [4, 5]".into(), "stream-K".into());
        let b = TuningFile::new("card A".into());
        b.open(Some(&path)).unwrap();
        assert_eq!(b.get("gemm 1x2x3").and_then(|v| parse_algo_hex(&v)), Some([1, 2, 3, 4, 5, 6, 7, u64::MAX]));
        assert_eq!(b.get("kernel fc2 [4, 5]").as_deref(), Some("stream-K"));
        assert_eq!(b.get("kernel fc2 [4, 6]"), None);
        // Another card: nothing is used, and its first choice rewrites the file for itself.
        let c = TuningFile::new("card B".into());
        c.open(Some(&path)).unwrap();
        assert_eq!(c.get("gemm 1x2x3"), None);
        c.set("gemm 7x8x9".into(), algo_hex(&[0; 8]));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(HEADER) && text.contains("for = card B\n") && !text.contains("1x2x3"), "{text}");
        // Two users of one file (two processes, or two devices of one): neither loses the
        // other's choices.
        let (d, e) = (TuningFile::new("card B".into()), TuningFile::new("card B".into()));
        d.open(Some(&path)).unwrap();
        e.open(Some(&path)).unwrap();
        d.set("gemm d".into(), "1".into());
        e.set("gemm e".into(), "2".into());
        d.set("gemm d2".into(), "3".into());
        let text = std::fs::read_to_string(&path).unwrap();
        for k in ["gemm 7x8x9", "gemm d =", "gemm e =", "gemm d2 ="] {
            assert!(text.contains(k), "{k} in {text}");
        }
        // Without a file nothing is kept.
        c.open(None).unwrap();
        c.set("gemm 1x1x1".into(), "0".into());
        assert_eq!(c.get("gemm 1x1x1"), None);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_malformed_or_unreadable_file_is_an_error_naming_it() {
        let path = temp("malformed");
        std::fs::write(&path, "for = card A\nthis is not a tuning file\n").unwrap();
        let t = TuningFile::new("card A".into());
        let e = t.open(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains(&path.display().to_string()), "{e}");
        assert_eq!(t.path(), None);
        std::fs::write(&path, "for = card A\nsplit = 3\n").unwrap();
        assert!(t.open(Some(&path)).unwrap_err().to_string().contains("unknown entry"));
        let _ = std::fs::remove_file(&path);
        // A folder is not a file.
        let e = t.open(Some(&std::env::temp_dir())).unwrap_err().to_string();
        assert!(e.contains("cannot read the tuning file"), "{e}");
    }

    #[test]
    fn a_file_that_cannot_be_written_costs_only_the_saving() {
        let t = TuningFile::new("card A".into());
        let path = std::env::temp_dir().join("cascade-no-such-folder").join("tuning.txt");
        t.open(Some(&path)).unwrap();
        t.set("gemm 1x2x3".into(), "x".into());
        // Still kept in memory for this process.
        assert_eq!(t.get("gemm 1x2x3").as_deref(), Some("x"));
        assert!(!path.exists());
    }

    #[test]
    fn algorithm_descriptions_round_trip() {
        let a = [0, 1, 0xdead_beef, u64::MAX, 42, 7, 0, 9];
        assert_eq!(parse_algo_hex(&algo_hex(&a)), Some(a));
        assert_eq!(parse_algo_hex("1 2 3"), None);
        assert_eq!(parse_algo_hex("zz 0 0 0 0 0 0 0"), None);
    }
}
