//! The PyTorch-compatible noise: successive draws from `torch.Generator("cpu").manual_seed(S)`
//! for several seeds and sizes (tests/fixtures/torch_randn.safetensors, written by
//! tools/reference/torch_noise.py), and the pipeline fixture's noise from its seed.

use cascade::sampling::torch_rng::TorchGenerator;
use cascade::weights::WeightStore;
use cascade::{DType, Device};

const SIZES: [usize; 7] = [37, 5, 288, 8192, 16, 3, 1000];

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // Box–Muller in f32: libm and PyTorch's vectorised log/sin/cos differ by an ulp or two.
        assert!((g - w).abs() <= 2e-6 * w.abs().max(1.0), "{what}[{i}]: {g} vs torch {w}");
    }
}

#[test]
fn randn_matches_torch_for_several_seeds_and_sizes() {
    let store = WeightStore::open(&[cascade::testing::fixtures_dir().join("torch_randn.safetensors")]).unwrap();
    for seed in [0u64, 1234, 98765, (1 << 40) + 7] {
        let mut g = TorchGenerator::new(seed);
        for (k, n) in SIZES.iter().enumerate() {
            let name = format!("seed{seed}_draw{k}");
            let want = store.load(&name, DType::F32, &Device::Cpu).unwrap().to_vec_f32().unwrap();
            assert_close(&name, &g.randn(*n), &want);
        }
    }
}

#[test]
fn the_pipeline_fixture_noise_comes_from_its_seed() {
    let tiny = cascade::testing::fixtures_dir().join("tiny");
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tiny.join("reference/pipeline.json")).unwrap()).unwrap();
    let noise = WeightStore::open(&[tiny.join("reference/pipeline_noise.safetensors")]).unwrap();
    let mut g = TorchGenerator::new(s["seed"].as_u64().unwrap());
    let mut names: Vec<String> = vec!["noise_prior_init".into()];
    names.extend((0..s["prior_steps"].as_u64().unwrap()).map(|i| format!("noise_prior_step{i}")));
    names.push("noise_decoder_init".into());
    names.extend((0..s["decoder_steps"].as_u64().unwrap()).map(|i| format!("noise_decoder_step{i}")));
    for name in names {
        let want = noise.load(&name, DType::F32, &Device::Cpu).unwrap().to_vec_f32().unwrap();
        assert_close(&name, &g.randn(want.len()), &want);
    }
}

/// For a bf16 model diffusers draws in bf16; for tensors whose size is a multiple of 16 (every
/// latent: 16 or 4 channels times an even size) PyTorch's bf16 values are its f32 values rounded.
#[test]
fn bf16_draws_are_the_f32_draws_rounded() {
    let store = WeightStore::open(&[cascade::testing::fixtures_dir().join("torch_randn.safetensors")]).unwrap();
    for seed in [0u64, 1234] {
        let mut g = TorchGenerator::new(seed);
        for (k, n) in [288usize, 8192].iter().enumerate() {
            let want = store.load(&format!("bf16_seed{seed}_draw{k}"), DType::F32, &Device::Cpu).unwrap().to_vec_f32().unwrap();
            let got = cascade::testing::round_to(&g.randn(*n), DType::BF16);
            assert_eq!(got, want, "seed {seed} draw {k}");
        }
    }
}
