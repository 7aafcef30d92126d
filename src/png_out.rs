//! Writing generated images: PNG with the generation parameters in `tEXt` chunks, written
//! atomically (a temporary file in the same folder, then a rename), never replacing an
//! existing file unless asked.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Encodes `image` as PNG with `text` as `tEXt` chunks (key, value).
pub fn encode_png(image: &image::RgbImage, text: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, image.width(), image.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_text_chunk(k.to_string(), v.clone()).map_err(|e| Error::Msg(format!("PNG text chunk '{k}': {e}")))?;
        }
        let mut w = enc.write_header().map_err(|e| Error::Msg(format!("PNG header: {e}")))?;
        w.write_image_data(image.as_raw()).map_err(|e| Error::Msg(format!("PNG data: {e}")))?;
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` atomically; fails if `path` exists and `overwrite` is false.
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        return Err(Error::file(path, "already exists (use --force to replace it)"));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| Error::file(path, "not a file name"))?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(path, format!("cannot write: {e}")));
    }
    Ok(())
}

/// Reads the `tEXt` chunks of a PNG file (for checks and `cascade info`).
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let f = std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let reader = png::Decoder::new(std::io::BufReader::new(f)).read_info().map_err(|e| Error::file(path, format!("not a PNG: {e}")))?;
    Ok(reader.info().uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect())
}
