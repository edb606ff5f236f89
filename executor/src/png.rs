//! PNG encoding (deterministic: same pixels → same bytes).

use image::ImageEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};

use crate::error::{ExecutorError, Result};

fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    color: image::ExtendedColorType,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive)
        .write_image(pixels, width, height, color)
        .map_err(|e| ExecutorError::Png(e.to_string()))?;
    Ok(out)
}

/// 16-bit grayscale; `values` row-major, already in 0..=65535.
pub fn gray16(values: &[u16], width: u32, height: u32) -> Result<Vec<u8>> {
    // PNG stores 16-bit samples big-endian; the encoder takes native-endian bytes.
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    encode(&bytes, width, height, image::ExtendedColorType::L16)
}

/// 8-bit RGB, row-major interleaved.
pub fn rgb8(pixels: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    encode(pixels, width, height, image::ExtendedColorType::Rgb8)
}
