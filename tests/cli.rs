//! The command line (`cascade forward`, `tokenize`, `generate`) on the tiny fixtures: the
//! tensors it writes match diffusers' reference tensors.

use std::path::PathBuf;
use std::process::Command;

use cascade::testing::rel_l2;
use cascade::weights::WeightStore;
use cascade::{DType, Device};

fn tiny() -> PathBuf {
    cascade::testing::fixtures_dir().join("tiny")
}

fn cascade(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cascade")).args(args).output().unwrap();
    assert!(out.status.success(), "cascade {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn compare(got: &std::path::Path, want: &str, bound: f64) {
    let got = WeightStore::open(&[got]).unwrap();
    let want = WeightStore::open(&[tiny().join("reference").join(want)]).unwrap();
    for name in want.names() {
        let g = got.load(name, DType::F32, &Device::Cpu).unwrap().to_vec_f32().unwrap();
        let w = want.load(name, DType::F32, &Device::Cpu).unwrap().to_vec_f32().unwrap();
        let err = rel_l2(&g, &w);
        assert!(err <= bound, "{name}: {err:.3e}");
    }
}

#[test]
fn forward_each_component() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny();
    for (component, case) in
        [("text_encoder", "text_encoder"), ("prior", "prior"), ("decoder", "decoder"), ("decoder_lite", "decoder_lite"), ("vqgan", "vqgan")]
    {
        let out = dir.path().join(format!("{case}.safetensors"));
        let inputs = model.join("reference").join(format!("{case}_in.safetensors"));
        cascade(&[
            "forward",
            "--model-dir",
            model.to_str().unwrap(),
            "--component",
            component,
            "--inputs",
            inputs.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        compare(&out, &format!("{case}_out.safetensors"), 1e-5);
    }
}

#[test]
fn generate_with_injected_noise_reproduces_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let (dump, png) = (dir.path().join("dump.safetensors"), dir.path().join("fox.png"));
    let noise = tiny().join("reference/pipeline_noise.safetensors");
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tiny().join("reference/pipeline.json")).unwrap()).unwrap();
    let arg = |k: &str| s[k].to_string().trim_matches('"').to_string();
    cascade(&[
        "generate",
        "--model-dir",
        tiny().to_str().unwrap(),
        "--prompt",
        &arg("prompt"),
        "--width",
        &arg("width"),
        "--height",
        &arg("height"),
        "--prior-steps",
        &arg("prior_steps"),
        "--prior-guidance",
        &arg("prior_guidance"),
        "--decoder-steps",
        &arg("decoder_steps"),
        "--decoder-guidance",
        &arg("decoder_guidance"),
        "--noise",
        noise.to_str().unwrap(),
        "--dump-tensors",
        dump.to_str().unwrap(),
        "--output",
        png.to_str().unwrap(),
    ]);
    compare(&dump, "pipeline_out.safetensors", 1e-4);
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (256, 128));
}

#[test]
fn tokenize_prints_ids_and_masks() {
    let line = cascade(&["tokenize", "--model-dir", tiny().to_str().unwrap(), "a red fox"]);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["input_ids"].as_array().unwrap().len(), 77);
    assert_eq!(v["attention_mask"].as_array().unwrap().iter().filter(|m| m.as_u64() == Some(1)).count(), 6);
}

#[test]
fn errors_are_messages_not_panics() {
    let out = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["forward", "--component", "prior", "--inputs", "/nonexistent.safetensors", "--output", "/tmp/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("nonexistent.safetensors"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_cascade")).args(["generate", "--prompt", "x", "--device", "tpu"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device"));
    // A misspelt option is an error naming it, with the nearest one the command takes.
    let out = Command::new(env!("CARGO_BIN_EXE_cascade")).args(["generate", "--prompt", "x", "--prior-step", "5"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--prior-step ") && err.contains("did you mean --prior-steps?"), "{err}");
    // A switch of another command.
    let out = Command::new(env!("CARGO_BIN_EXE_cascade")).args(["tokenize", "--force", "a fox"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`cascade tokenize` does not take --force"), "{err}");
}

#[test]
fn builtin_model_png_metadata_and_no_silent_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("fox.png");
    let p = png.to_str().unwrap();
    let args = [
        "generate",
        "--device",
        "cpu",
        "--prompt",
        "a red fox",
        "--width",
        "128",
        "--height",
        "128",
        "--prior-steps",
        "2",
        "--decoder-steps",
        "1",
        "--seed",
        "7",
        "--output",
        p,
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_cascade")).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("noise until real weights") && stderr.contains("end to end"), "{stderr}");
    let text = cascade::png_out::read_png_text(&png).unwrap();
    let get = |k: &str| text.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("prompt").as_deref(), Some("a red fox"));
    assert_eq!(get("seed").as_deref(), Some("7"));
    assert_eq!(get("prior_steps").as_deref(), Some("2"));
    assert_eq!(get("size").as_deref(), Some("128x128"));
    // An existing file is kept unless --force.
    let again = Command::new(env!("CARGO_BIN_EXE_cascade")).args(args).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let forced = Command::new(env!("CARGO_BIN_EXE_cascade")).args(args).arg("--force").output().unwrap();
    assert!(forced.status.success());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp-")),
        "temporary files left behind"
    );
}

#[test]
fn info_describes_a_model_folder() {
    let out = cascade(&["info", tiny().to_str().unwrap()]);
    for needle in ["text_encoder", "prior_lite", "bf16 variant", "parameters", "complete for text to image"] {
        assert!(out.contains(needle), "info lacks '{needle}':\n{out}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(tiny().join("prior"), dir.path().join("prior")).unwrap();
    let out = cascade(&["info", dir.path().to_str().unwrap()]);
    assert!(out.contains("missing for text to image") && out.contains("decoder") && out.contains("vqgan"), "{out}");
}
