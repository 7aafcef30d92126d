//! Build script. Without the `cuda` feature it does nothing. With it:
//! 1. finds nvcc (NVCC, CUDA_HOME, PATH, or the repo's own `.venv-cuda` from
//!    `scripts/setup-cuda.sh`);
//! 2. compiles every `kernels/*.cu` into one fatbin with SASS for sm_80/86/89/90a and PTX for
//!    compute_80, refusing PTX newer than ISA 9.0 (the newest a CUDA 13.0 driver accepts);
//! 3. runs bindgen on `kernels/params.h`, so Rust and CUDA share every parameter struct;
//! 4. generates the kernel table: every `extern "C" __global__` entry point of every file,
//!    loaded once at start-up (a name missing from its fatbin is a load-time error).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::env;
    use std::fmt::Write as _;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const SETUP_HINT: &str = "run `scripts/setup-cuda.sh` (installs the pinned CUDA 13.0 toolchain and libclang), \
         or build without `--features cuda`";
    /// SASS targets; the first is also shipped as PTX for newer GPUs.
    const ARCHS: &[&str] = &["80", "86", "89", "90a"];
    /// Newest PTX ISA the GPU machines' driver (580, CUDA 13.0) accepts.
    const MAX_PTX_ISA: (u32, u32) = (9, 0);

    pub fn build() {
        let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
        let out = PathBuf::from(env::var("OUT_DIR").unwrap());
        let kernels_dir = root.join("kernels");
        println!("cargo:rerun-if-changed={}", kernels_dir.display());

        let nvcc = find_nvcc(&root)
            .unwrap_or_else(|| fail(&format!("nvcc not found (looked at $NVCC, $CUDA_HOME/bin, $PATH and .venv-cuda): {SETUP_HINT}")));
        let mut sources: Vec<PathBuf> = fs::read_dir(&kernels_dir)
            .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", kernels_dir.display())))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        sources.sort();
        for entry in fs::read_dir(&kernels_dir).unwrap().flatten() {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }

        // Compile all files in parallel: each is an independent nvcc run.
        let handles: Vec<_> = sources
            .iter()
            .map(|src| {
                let (nvcc, src, out, inc) = (nvcc.clone(), src.clone(), out.clone(), kernels_dir.clone());
                std::thread::spawn(move || compile(&nvcc, &src, &out, &inc))
            })
            .collect();
        for h in handles {
            if let Err(msg) = h.join().unwrap() {
                fail(&msg);
            }
        }

        bindgen_params(&kernels_dir.join("params.h"), &out.join("params.rs"));
        write_kernel_table(&sources, &out);
    }

    fn fail(msg: &str) -> ! {
        eprintln!("\nerror: cascade's CUDA build failed: {msg}\n");
        panic!("cascade's CUDA build failed: {msg}");
    }

    fn find_nvcc(root: &Path) -> Option<PathBuf> {
        let runs = |p: &Path| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
        if let Some(p) = env::var_os("NVCC") {
            return Some(PathBuf::from(p)).filter(|p| runs(p));
        }
        if let Some(home) = env::var_os("CUDA_HOME") {
            let p = PathBuf::from(home).join("bin/nvcc");
            if runs(&p) {
                return Some(p);
            }
        }
        if runs(Path::new("nvcc")) {
            return Some(PathBuf::from("nvcc"));
        }
        let lib = root.join(".venv-cuda/lib");
        for py in fs::read_dir(lib).ok()?.flatten() {
            let p = py.path().join("site-packages/nvidia/cu13/bin/nvcc");
            if runs(&p) {
                return Some(p);
            }
        }
        None
    }

    fn compile(nvcc: &Path, src: &Path, out: &Path, include: &Path) -> Result<(), String> {
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        let common = |cmd: &mut Command| {
            cmd.arg("-std=c++17").arg("-O3").arg("-lineinfo").arg("-I").arg(include).arg(src);
        };
        // PTX for the oldest target: checked for its ISA version, then embedded in the fatbin.
        let ptx = out.join(format!("{stem}.ptx"));
        let mut cmd = Command::new(nvcc);
        common(&mut cmd);
        cmd.arg("-ptx").arg(format!("-arch=compute_{}", ARCHS[0])).arg("-o").arg(&ptx);
        run(&mut cmd, src)?;
        let text = fs::read_to_string(&ptx).map_err(|e| format!("{}: {e}", ptx.display()))?;
        let version =
            text.lines().find_map(|l| l.trim().strip_prefix(".version ")).ok_or_else(|| format!("{}: no .version line", ptx.display()))?;
        let (major, minor) = version
            .trim()
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .ok_or_else(|| format!("{}: bad .version {version}", ptx.display()))?;
        if (major, minor) > MAX_PTX_ISA {
            return Err(format!(
                "nvcc emits PTX ISA {major}.{minor}, newer than {}.{} which CUDA 13.0 drivers accept; \
                 use the pinned toolchain: {SETUP_HINT}",
                MAX_PTX_ISA.0, MAX_PTX_ISA.1
            ));
        }

        let fatbin = out.join(format!("{stem}.fatbin"));
        let mut cmd = Command::new(nvcc);
        common(&mut cmd);
        cmd.arg("-fatbin");
        for a in ARCHS {
            cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
        }
        cmd.arg(format!("-gencode=arch=compute_{0},code=compute_{0}", ARCHS[0]));
        cmd.arg("-o").arg(&fatbin);
        run(&mut cmd, src)
    }

    fn run(cmd: &mut Command, src: &Path) -> Result<(), String> {
        let o = cmd.output().map_err(|e| format!("cannot run nvcc: {e}: {SETUP_HINT}"))?;
        if !o.status.success() {
            return Err(format!(
                "nvcc failed on {}:\n{}{}",
                src.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(())
    }

    fn bindgen_params(header: &Path, out: &Path) {
        if env::var_os("LIBCLANG_PATH").is_none() && Path::new("/usr/lib/llvm-14/lib").exists() {
            env::set_var("LIBCLANG_PATH", "/usr/lib/llvm-14/lib");
        }
        let header = header.to_path_buf();
        // bindgen panics when libclang cannot be loaded; turn that into the setup hint.
        let result = std::panic::catch_unwind(move || {
            bindgen::Builder::default()
                .header(header.to_string_lossy())
                .allowlist_type(".*Params")
                .allowlist_var("CASCADE_.*")
                .derive_default(true)
                .derive_debug(true)
                .layout_tests(true)
                .use_core()
                .generate()
        });
        match result {
            Ok(Ok(bindings)) => bindings.write_to_file(out).unwrap_or_else(|e| fail(&format!("{}: {e}", out.display()))),
            Ok(Err(e)) => {
                fail(&format!("bindgen could not parse kernels/params.h ({e}); is libclang-common-14-dev installed? {SETUP_HINT}"))
            }
            Err(_) => fail(&format!("bindgen could not load libclang: {SETUP_HINT}")),
        }
    }

    /// Every `extern "C" __global__ void [__launch_bounds__(..) | __maxnreg__(..)] name(` in a
    /// kernel file is an entry point.
    fn entry_points(src: &Path) -> Vec<String> {
        let text = fs::read_to_string(src).unwrap_or_else(|e| fail(&format!("{}: {e}", src.display())));
        let mut names = Vec::new();
        for (i, _) in text.match_indices("extern \"C\" __global__") {
            let rest = text[i + 21..].trim_start();
            let Some(mut rest) = rest.strip_prefix("void") else {
                fail(&format!("{}: an entry point must return void: `{}`", src.display(), &rest[..rest.len().min(60)]))
            };
            rest = rest.trim_start();
            // Either launch attribute (ptxas rejects both on one kernel).
            if let Some(r) = rest.strip_prefix("__launch_bounds__").or_else(|| rest.strip_prefix("__maxnreg__")) {
                rest = r[r.find(')').map_or(0, |j| j + 1)..].trim_start();
            }
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if name.is_empty() || !rest[name.len()..].trim_start().starts_with('(') {
                fail(&format!("{}: cannot read an entry point name near `{}`", src.display(), &rest[..rest.len().min(60)]));
            }
            names.push(name);
        }
        names
    }

    fn write_kernel_table(sources: &[PathBuf], out: &Path) {
        let mut seen = std::collections::HashSet::new();
        let mut fields = String::new();
        let mut loads = String::new();
        let mut names = String::new();
        for src in sources {
            let stem = src.file_stem().unwrap().to_string_lossy().to_string();
            let fatbin = out.join(format!("{stem}.fatbin"));
            writeln!(loads, "        let m = load_module(ctx, \"{stem}\", include_bytes!({:?}))?;", fatbin.display()).unwrap();
            for name in entry_points(src) {
                if !seen.insert(name.clone()) {
                    fail(&format!("kernel name `{name}` is defined twice in kernels/"));
                }
                writeln!(fields, "    /// `{name}` from `kernels/{stem}.cu`.\n    pub {name}: CudaFunction,").unwrap();
                writeln!(loads, "        let {name} = load_function(&m, \"{stem}\", \"{name}\")?;").unwrap();
                writeln!(names, "    (\"{stem}\", \"{name}\"),").unwrap();
            }
        }
        let inits: Vec<&str> = seen.iter().map(|s| s.as_str()).collect::<Vec<_>>();
        let mut inits_sorted = inits.clone();
        inits_sorted.sort();
        let code = format!(
            "/// Every kernel of `kernels/`, loaded once when a CUDA device is opened.\n\
             pub struct Kernels {{\n{fields}}}\n\n\
             /// (file, kernel) for every entry point, in file order.\n\
             pub const KERNEL_NAMES: &[(&str, &str)] = &[\n{names}];\n\n\
             impl Kernels {{\n    /// Loads every fatbin and looks up every entry point.\n\
             pub fn load(ctx: &std::sync::Arc<cudarc::driver::CudaContext>) -> crate::Result<Self> {{\n{loads}        Ok(Self {{ {} }})\n    }}\n}}\n",
            inits_sorted.join(", ")
        );
        fs::write(out.join("kernels.rs"), code).unwrap();
    }
}
