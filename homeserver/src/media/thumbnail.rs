//! Server-side thumbnails of images, in the sizes the Matrix spec recommends, made on
//! `spawn_blocking` (decoding is CPU work) and cached by the caller.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, imageops::FilterType};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

/// The spec's recommended thumbnail sizes.
const SIZES: [(u32, u32, Method); 5] = [
    (32, 32, Method::Crop),
    (96, 96, Method::Crop),
    (320, 240, Method::Scale),
    (640, 480, Method::Scale),
    (800, 600, Method::Scale),
];

/// Decoding is refused beyond this many bytes of pixel memory (decompression bombs).
const MAX_DECODE_ALLOC: u64 = 128 * 1024 * 1024;

/// The size to serve for a request: the smallest predefined one of the method that is at
/// least as big as asked, else the biggest of the method.
pub fn pick(width: u32, height: u32, method: Method) -> (u32, u32, Method) {
    let of_method = SIZES.iter().filter(|(_, _, m)| *m == method);
    of_method
        .clone()
        .find(|(w, h, _)| *w >= width && *h >= height)
        .or_else(|| of_method.clone().next_back())
        .copied()
        .expect("each method has sizes")
}

/// Whether a content type is an image we can thumbnail.
pub fn supported(content_type: &str) -> bool {
    format_of(content_type).is_some()
}

fn format_of(content_type: &str) -> Option<ImageFormat> {
    match content_type
        .split(';')
        .next()?
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "image/jpeg" | "image/jpg" => Some(ImageFormat::Jpeg),
        "image/png" => Some(ImageFormat::Png),
        "image/gif" => Some(ImageFormat::Gif),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

/// Renders a thumbnail: `(bytes, content type)`. Never scales up.
pub fn render(
    bytes: &[u8],
    content_type: &str,
    width: u32,
    height: u32,
    method: Method,
) -> Result<(Vec<u8>, &'static str), String> {
    let format = format_of(content_type).ok_or("not an image we can thumbnail")?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| e.to_string())?;
    let thumb = match method {
        Method::Scale if image.width() <= width && image.height() <= height => image,
        Method::Scale => image.resize(width, height, FilterType::Triangle),
        Method::Crop => {
            let (w, h) = (width.min(image.width()), height.min(image.height()));
            image.resize_to_fill(w, h, FilterType::Triangle)
        }
    };
    // JPEG stays JPEG (photos); everything else becomes PNG (keeps transparency).
    let mut out = Cursor::new(Vec::new());
    let content_type = if format == ImageFormat::Jpeg {
        DynamicImage::ImageRgb8(thumb.to_rgb8())
            .write_to(&mut out, ImageFormat::Jpeg)
            .map_err(|e| e.to_string())?;
        "image/jpeg"
    } else {
        thumb
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        "image/png"
    };
    Ok((out.into_inner(), content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_smallest_size_that_fits() {
        assert_eq!(pick(10, 10, Method::Crop), (32, 32, Method::Crop));
        assert_eq!(pick(50, 50, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(pick(500, 100, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(pick(300, 300, Method::Scale), (640, 480, Method::Scale));
        assert_eq!(pick(4000, 4000, Method::Scale), (800, 600, Method::Scale));
    }

    #[test]
    fn renders_png_and_jpeg() {
        let img = DynamicImage::new_rgba8(400, 200);
        let mut png = Cursor::new(Vec::new());
        img.write_to(&mut png, ImageFormat::Png).unwrap();
        let (out, ct) = render(png.get_ref(), "image/png", 96, 96, Method::Crop).unwrap();
        assert_eq!(ct, "image/png");
        let t = image::load_from_memory(&out).unwrap();
        assert_eq!((t.width(), t.height()), (96, 96));
        let (out, _) = render(png.get_ref(), "image/png", 320, 240, Method::Scale).unwrap();
        let t = image::load_from_memory(&out).unwrap();
        assert_eq!((t.width(), t.height()), (320, 160));
        let mut jpg = Cursor::new(Vec::new());
        DynamicImage::new_rgb8(64, 64)
            .write_to(&mut jpg, ImageFormat::Jpeg)
            .unwrap();
        let (_, ct) = render(jpg.get_ref(), "image/jpeg", 800, 600, Method::Scale).unwrap();
        assert_eq!(ct, "image/jpeg");
        assert!(render(b"not an image", "image/png", 32, 32, Method::Crop).is_err());
        assert!(render(b"x", "application/pdf", 32, 32, Method::Crop).is_err());
    }
}
