//! The weight loader: round trips, sharded checkpoints, the completeness report, and every
//! kind of corrupt file giving an error that names the file and the problem.

use std::io::Write;
use std::path::{Path, PathBuf};

use cascade::weights::{save, VarBuilder, WeightStore};
use cascade::{DType, Device, Tensor};

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 - 3.0) * 0.37).collect()
}

/// A raw safetensors file: 8-byte header length, JSON header, data.
fn raw_file(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.write_all(data).unwrap();
    path
}

#[test]
fn round_trip_each_dtype_and_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let v = ramp(24);
    let tensors: Vec<(String, Tensor)> = [DType::F32, DType::BF16, DType::F16]
        .iter()
        .map(|&d| (format!("w_{d}"), Tensor::from_f32(&v, &[2, 3, 4], d, &Device::Cpu).unwrap()))
        .collect();
    let path = dir.path().join("m.safetensors");
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(&path, &refs).unwrap();

    let store = WeightStore::open(&[&path]).unwrap();
    assert_eq!(store.len(), 3);
    for (name, t) in &tensors {
        let want = t.to_vec_f32().unwrap();
        for target in [DType::F32, DType::BF16, DType::F16] {
            let got = store.load(name, target, &Device::Cpu).unwrap();
            assert_eq!(got.shape(), &[2, 3, 4]);
            assert_eq!(got.dtype(), target);
            let got = got.to_vec_f32().unwrap();
            // Converting to a narrower type rounds; the values here survive f16 and bf16
            // within their precision.
            for (g, w) in got.iter().zip(&want) {
                let tol = if target == DType::F32 && t.dtype() == DType::F32 { 0.0 } else { w.abs() * 8e-3 };
                assert!((g - w).abs() <= tol, "{name} as {target}: {g} vs {w}");
            }
        }
    }
    // f32 → bf16 must be round-to-nearest-even, bit-exact with the half crate.
    let got = store.load("w_f32", DType::BF16, &Device::Cpu).unwrap().to_vec_f32().unwrap();
    let want: Vec<f32> = v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    assert_eq!(got, want);
}

#[test]
fn sharded_checkpoint_through_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let a = Tensor::from_f32(&ramp(6), &[2, 3], DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::from_f32(&ramp(4), &[4], DType::BF16, &Device::Cpu).unwrap();
    save(dir.path().join("model-00001-of-00002.safetensors"), &[("layer.0.weight", &a)]).unwrap();
    save(dir.path().join("model-00002-of-00002.safetensors"), &[("layer.1.weight", &b)]).unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(
        &index,
        r#"{"metadata": {"total_size": 32}, "weight_map": {
            "layer.0.weight": "model-00001-of-00002.safetensors",
            "layer.1.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let store = WeightStore::open(&[&index]).unwrap();
    assert_eq!(store.files().len(), 2);
    let vb = VarBuilder::new(store, DType::F32, &Device::Cpu);
    let l = vb.pp("layer");
    assert_eq!(l.pp(0).get("weight", &[2, 3]).unwrap().to_vec_f32().unwrap(), ramp(6));
    assert_eq!(l.pp(1).get("weight", &[4]).unwrap().to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    vb.finish().unwrap();
}

#[test]
fn report_lists_missing_wrong_shape_and_unused() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::from_f32(&ramp(6), &[2, 3], DType::F32, &Device::Cpu).unwrap();
    let path = dir.path().join("m.safetensors");
    save(&path, &[("a.weight", &t), ("a.bias", &t), ("extra.weight", &t)]).unwrap();
    let vb = VarBuilder::new(WeightStore::open(&[&path]).unwrap(), DType::F32, &Device::Cpu);
    let a = vb.pp("a");
    let e = a.get("weight", &[3, 2]).unwrap_err().to_string();
    assert!(e.contains("a.weight") && e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
    let e = a.get("gamma", &[3]).unwrap_err().to_string();
    assert!(e.contains("a.gamma") && e.contains("missing"), "{e}");
    a.get("bias", &[2, 3]).unwrap();

    let report = vb.report();
    assert_eq!(report.missing, vec!["a.gamma".to_string()]);
    assert_eq!(report.wrong_shape, vec![("a.weight".to_string(), vec![3, 2], vec![2, 3])]);
    assert_eq!(report.unused, vec!["extra.weight".to_string()]);
    let e = vb.finish().unwrap_err().to_string();
    for needle in ["a.gamma", "a.weight", "extra.weight", "missing", "wrong shape", "unused"] {
        assert!(e.contains(needle), "finish() message lacks '{needle}': {e}");
    }
}

#[test]
fn unsupported_dtype_is_an_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = raw_file(dir.path(), "i64.safetensors", r#"{"n":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, &[0; 8]);
    let store = WeightStore::open(&[&p]).unwrap();
    let e = store.load("n", DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("'n'") && e.contains("I64") && e.contains("i64.safetensors"), "{e}");
}

/// Each corruption gives an error naming the file and a phrase describing the problem.
#[test]
fn corrupt_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good_header = r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("truncated data", raw_file(d, "trunc.safetensors", good_header, &[0; 5]), "truncated"),
        ("trailing bytes", raw_file(d, "trail.safetensors", good_header, &[0; 12]), "trailing"),
        ("bad JSON", raw_file(d, "json.safetensors", r#"{"x":{"dtype":"F32","#, &[]), "malformed"),
        ("not an object", raw_file(d, "notobj.safetensors", "[1, 2, 3]", &[]), "malformed"),
        ("unknown dtype", raw_file(d, "dtype.safetensors", r#"{"x":{"dtype":"F12","shape":[2],"data_offsets":[0,8]}}"#, &[0; 8]), "dtype"),
        (
            "offsets out of range",
            raw_file(d, "range.safetensors", r#"{"x":{"dtype":"F32","shape":[200],"data_offsets":[0,800]}}"#, &[0; 8]),
            "truncated",
        ),
        (
            "overlapping offsets",
            raw_file(
                d,
                "overlap.safetensors",
                r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            ),
            "overlapping",
        ),
        (
            "length does not match shape",
            raw_file(d, "len.safetensors", r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]),
            "does not match",
        ),
        (
            "shape overflow",
            raw_file(d, "ovf.safetensors", r#"{"x":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,8]}}"#, &[0; 8]),
            "overflow",
        ),
    ];
    for (what, path, needle) in &cases {
        let e = WeightStore::open(&[path]).expect_err(what).to_string();
        let file = path.file_name().unwrap().to_string_lossy();
        assert!(e.contains(&*file), "{what}: message does not name the file: {e}");
        assert!(e.contains(needle), "{what}: message lacks '{needle}': {e}");
    }

    // Header length past the end of the file, and a file too small for the length field.
    let p = d.join("hdr.safetensors");
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&p, &bytes).unwrap();
    let e = WeightStore::open(&[&p]).unwrap_err().to_string();
    assert!(e.contains("hdr.safetensors") && e.contains("past the end"), "{e}");
    let p = d.join("tiny.safetensors");
    std::fs::write(&p, [1, 2, 3]).unwrap();
    let e = WeightStore::open(&[&p]).unwrap_err().to_string();
    assert!(e.contains("tiny.safetensors") && e.contains("too small"), "{e}");
    let e = WeightStore::open(&[d.join("absent.safetensors")]).unwrap_err().to_string();
    assert!(e.contains("absent.safetensors") && e.contains("cannot open"), "{e}");
}

#[test]
fn corrupt_indexes_give_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        ("bad.index.json", "{not json", "invalid JSON"),
        ("nomap.index.json", r#"{"metadata": {}}"#, "weight_map"),
        ("escape.index.json", r#"{"weight_map": {"a": "../x.safetensors"}}"#, "plain file name"),
        ("missing.index.json", r#"{"weight_map": {"a": "gone.safetensors"}}"#, "gone.safetensors"),
    ];
    for (name, text, needle) in cases {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        let e = WeightStore::open(&[&p]).unwrap_err().to_string();
        assert!(e.contains(needle), "{name}: {e}");
    }
}

/// Random byte flips and truncations of a valid file: every outcome is Ok or an error, and
/// an Ok store loads every tensor without panicking.
#[test]
fn mutated_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::from_f32(&ramp(12), &[3, 4], DType::F32, &Device::Cpu).unwrap();
    let u = Tensor::from_f32(&ramp(5), &[5], DType::BF16, &Device::Cpu).unwrap();
    let good = dir.path().join("good.safetensors");
    save(&good, &[("t", &t), ("u", &u)]).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let p = dir.path().join("mut.safetensors");
    for case in 0..400 {
        let mut b = bytes.clone();
        if case % 4 == 0 {
            b.truncate((next() as usize) % b.len());
        } else {
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
        }
        std::fs::write(&p, &b).unwrap();
        if let Ok(store) = WeightStore::open(&[&p]) {
            let names: Vec<String> = store.names().map(String::from).collect();
            for n in names {
                let _ = store.load(&n, DType::F32, &Device::Cpu);
            }
        }
    }
}

#[test]
fn arena_enforces_its_capacity_and_resets() {
    let mut arena = cascade::Arena::new(&Device::Cpu, 4096).unwrap();
    let a = arena.tensor(&[100], DType::F32).unwrap();
    assert_eq!(a.shape(), &[100]);
    assert_eq!(arena.used(), 400);
    let _b = arena.tensor(&[10], DType::BF16).unwrap();
    assert_eq!(arena.used(), 512 + 20, "buffers start on 256-byte boundaries");
    let e = arena.tensor(&[2000], DType::F32).unwrap_err();
    assert!(matches!(e, cascade::Error::OutOfMemory(_)) && e.to_string().contains("arena exhausted"), "{e}");
    arena.reset();
    assert_eq!(arena.used(), 0);
    assert_eq!(arena.high_water(), 532);
    arena.tensor(&[1024], DType::F32).unwrap();
}
