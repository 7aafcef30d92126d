//! Checkpoint formats: the original Stability single files (packed `in_proj` attention,
//! `clip_mapper`, `vquantizer.codebook`) load to the same outputs as their diffusers twins,
//! each stage is told from its tensors, and a folder of original files is found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cascade::models::config::{read_config, UNetConfig, VqganConfig};
use cascade::models::unet::{StableCascadeUNet, UNetInputTensors};
use cascade::models::vqgan::Vqgan;
use cascade::models::{nchw_to_nhwc, OriginalKind};
use cascade::pipeline::ModelPaths;
use cascade::weights::{save, WeightStore};
use cascade::{DType, Device, Tensor};

fn tiny() -> PathBuf {
    cascade::testing::fixtures_dir().join("tiny")
}

fn load_all(path: &Path) -> BTreeMap<String, Tensor> {
    let s = WeightStore::open(&[path]).unwrap();
    // Integer buffers (BatchNorm's num_batches_tracked) belong to the unused encoder: skip them.
    s.names().filter_map(|n| s.load(n, DType::F32, &Device::Cpu).ok().map(|t| (n.to_string(), t))).collect()
}

/// Rewrites a diffusers state dict the way the original checkpoints name things.
fn to_original(tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for (name, t) in &tensors {
        if let Some(base) = name.strip_suffix(".attention.to_q.weight").or_else(|| name.strip_suffix(".attention.to_q.bias")) {
            let kind = if name.ends_with("weight") { "weight" } else { "bias" };
            let mut packed = Vec::new();
            for which in ["to_q", "to_k", "to_v"] {
                packed.extend(tensors[&format!("{base}.attention.{which}.{kind}")].to_vec_f32().unwrap());
            }
            let mut shape = t.shape().to_vec();
            shape[0] *= 3;
            out.insert(
                format!("{base}.attention.attn.in_proj_{kind}"),
                Tensor::from_f32(&packed, &shape, DType::F32, &Device::Cpu).unwrap(),
            );
        } else if name.contains(".attention.to_k.") || name.contains(".attention.to_v.") {
            continue;
        } else {
            let renamed = name
                .replace(".attention.to_out.0.", ".attention.attn.out_proj.")
                .replace("clip_txt_pooled_mapper.", "clip_mapper.")
                .replace("vquantizer.embedding.", "vquantizer.codebook.");
            out.insert(renamed, t.view(t.shape()).unwrap());
        }
    }
    out
}

fn write(path: &Path, tensors: &BTreeMap<String, Tensor>) {
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(path, &refs).unwrap();
}

fn unet_out(model: &StableCascadeUNet, case: &str) -> Vec<f32> {
    let inp = WeightStore::open(&[tiny().join(format!("reference/{case}_in.safetensors"))]).unwrap();
    let inputs = UNetInputTensors::from_store(&inp, DType::F32, &Device::Cpu).unwrap();
    model.forward(&inputs.inputs()).unwrap().to_vec_f32().unwrap()
}

#[test]
fn original_files_load_to_the_same_outputs_as_their_diffusers_twins() {
    let dir = tempfile::tempdir().unwrap();
    for (component, case) in [("prior", "prior"), ("decoder", "decoder")] {
        let original = to_original(load_all(&tiny().join(component).join("diffusion_pytorch_model.safetensors")));
        assert!(original.keys().any(|k| k.ends_with("in_proj_weight")), "the twin has packed attention");
        let file = dir.path().join(format!("{component}_original.safetensors"));
        write(&file, &original);
        let cfg: UNetConfig = read_config(&tiny().join(component).join("config.json")).unwrap();
        let from_original = StableCascadeUNet::load_original(&file, Some(cfg), DType::F32, &Device::Cpu).unwrap();
        let from_diffusers = StableCascadeUNet::load(&tiny().join(component), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(unet_out(&from_original, case), unet_out(&from_diffusers, case), "{component}");
    }
    let original = to_original(load_all(&tiny().join("vqgan/diffusion_pytorch_model.safetensors")));
    assert!(original.contains_key("vquantizer.codebook.weight"));
    let file = dir.path().join("stage_a_tiny.safetensors");
    write(&file, &original);
    let cfg: VqganConfig = read_config(&tiny().join("vqgan/config.json")).unwrap();
    let a = Vqgan::load_original(&file, cfg, DType::F32, &Device::Cpu).unwrap();
    let b = Vqgan::load(&tiny().join("vqgan"), DType::F32, &Device::Cpu).unwrap();
    let lat = nchw_to_nhwc(
        &WeightStore::open(&[tiny().join("reference/vqgan_in.safetensors")]).unwrap().load("latents", DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    assert_eq!(a.decode(&lat).unwrap().to_vec_f32().unwrap(), b.decode(&lat).unwrap().to_vec_f32().unwrap());
}

#[test]
fn each_stage_is_told_from_its_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let t = |shape: &[usize]| Tensor::zeros(shape, DType::BF16, &Device::Cpu).unwrap();
    type Case<'a> = (&'a str, Vec<(&'a str, Tensor)>, Option<OriginalKind>);
    let cases: Vec<Case> = vec![
        ("c", vec![("clip_txt_mapper.weight", t(&[2048, 1]))], Some(OriginalKind::StageC)),
        ("c_lite", vec![("clip_txt_mapper.weight", t(&[1536, 1]))], Some(OriginalKind::StageCLite)),
        ("b", vec![("down_blocks.1.0.channelwise.0.weight", t(&[1, 640])), ("clip_mapper.weight", t(&[1, 1]))], Some(OriginalKind::StageB)),
        ("b_lite", vec![("down_blocks.1.0.channelwise.0.weight", t(&[1, 576]))], Some(OriginalKind::StageBLite)),
        (
            "a",
            vec![
                ("out_block.0.weight", t(&[12, 1, 1, 1])),
                ("up_blocks.0.0.weight", t(&[1, 4, 1, 1])),
                ("vquantizer.codebook.weight", t(&[2, 4])),
            ],
            Some(OriginalKind::StageA),
        ),
        ("c_odd", vec![("clip_txt_mapper.weight", t(&[100, 1]))], None),
        ("other", vec![("something.weight", t(&[1]))], None),
    ];
    for (name, tensors, want) in cases {
        let p = dir.path().join(format!("{name}.safetensors"));
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        save(&p, &refs).unwrap();
        let store = WeightStore::open_original(&[&p]).unwrap();
        match (OriginalKind::detect(&store), want) {
            (Ok(k), Some(w)) => assert_eq!(k, w, "{name}"),
            (Err(e), None) => assert!(e.to_string().contains(&format!("{name}.safetensors")), "{e}"),
            (got, want) => panic!("{name}: detected {got:?}, expected {want:?}"),
        }
        if name == "b" {
            assert!(store.entry("clip_txt_pooled_mapper.weight").is_some(), "clip_mapper is renamed");
        }
    }
}

#[test]
fn a_folder_of_original_files_is_found() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["stage_a.safetensors", "stage_b_bf16.safetensors", "stage_c_bf16.safetensors", "stage_c_lite_bf16.safetensors"] {
        std::fs::write(dir.path().join(f), b"").unwrap();
    }
    for d in ["text_encoder", "tokenizer"] {
        std::os::unix::fs::symlink(tiny().join(d), dir.path().join(d)).unwrap();
    }
    let p = ModelPaths::find(&[dir.path().to_path_buf()], false, false).unwrap();
    assert!(
        p.prior.ends_with("stage_c_bf16.safetensors")
            && p.decoder.ends_with("stage_b_bf16.safetensors")
            && p.vqgan.ends_with("stage_a.safetensors")
    );
    let p = ModelPaths::find(&[dir.path().to_path_buf()], true, false).unwrap();
    assert!(p.prior.ends_with("stage_c_lite_bf16.safetensors"));
    let e = ModelPaths::find(&[dir.path().to_path_buf()], false, true).unwrap_err().to_string();
    assert!(e.contains("decoder_lite"), "{e}");
}
