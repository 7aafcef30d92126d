//! The `cascade` command line: one user of the library.

use std::process::ExitCode;

use cascade::weights::WeightStore;
use cascade::{Device, Result};

const USAGE: &str = "\
cascade: Stable Cascade inference engine

usage:
  cascade info FILE...     list the tensors of safetensors files (or a *.safetensors.index.json):
                           count, dtypes, parameters
  cascade device [DEVICE]  open a device (cpu, cuda, cuda:N) and describe it
  cascade help             this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("info") if args.len() > 1 => info(&args[1..]),
        Some("device") => device(args.get(1).map(String::as_str).unwrap_or("cuda")),
        Some("help") | Some("--help") | Some("-h") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info(paths: &[String]) -> Result<()> {
    let store = WeightStore::open(paths)?;
    let mut params = 0usize;
    let mut by_dtype = std::collections::BTreeMap::<String, usize>::new();
    for name in store.names() {
        let e = store.entry(name).expect("listed name exists");
        let n: usize = e.shape.iter().product();
        params += n;
        *by_dtype.entry(format!("{:?}", e.dtype)).or_default() += 1;
    }
    println!("{} file(s), {} tensors, {params} parameters", store.files().len(), store.len());
    for (dtype, count) in by_dtype {
        println!("  {dtype}: {count} tensors");
    }
    Ok(())
}

fn device(name: &str) -> Result<()> {
    let d = Device::parse(name)?;
    println!("{}", d.describe());
    Ok(())
}
