//! The compressions a chunk may travel in (zstd and gzip), both ways, with a bound on what a
//! decompression may produce so that a small hostile body cannot expand without limit.

use std::io::{Read, Write};

/// Compression a chunk may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Zstd,
}

impl Encoding {
    /// The `Content-Encoding` / `encoding` name.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }

    /// The encoding of a `Content-Encoding` / `encoding` name.
    pub fn from_name(name: &str) -> Option<Encoding> {
        match name {
            "gzip" => Some(Encoding::Gzip),
            "zstd" => Some(Encoding::Zstd),
            _ => None,
        }
    }
}

/// Compresses `data`: zstd at level 3, gzip at its fastest level.
pub fn compress(data: &[u8], encoding: Encoding) -> std::io::Result<Vec<u8>> {
    match encoding {
        Encoding::Zstd => zstd::bulk::compress(data, 3),
        Encoding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 2),
                flate2::Compression::fast(),
            );
            encoder.write_all(data)?;
            encoder.finish()
        }
    }
}

/// Undoes [`compress`] for an encoding named `encoding`, refusing output larger than
/// `max_len`.
pub fn decompress(data: &[u8], encoding: &str, max_len: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(max_len.min(16 << 20));
    let limit = max_len as u64 + 1;
    match Encoding::from_name(encoding) {
        Some(Encoding::Zstd) => zstd::stream::read::Decoder::new(data)?
            .take(limit)
            .read_to_end(&mut out)?,
        Some(Encoding::Gzip) => flate2::read::GzDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out)?,
        None => {
            return Err(std::io::Error::other(format!(
                "unknown chunk encoding {encoding:?}"
            )))
        }
    };
    if out.len() > max_len {
        return Err(std::io::Error::other(
            "a chunk decompressed to more than its announced size",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_round_trips_and_bombs_are_refused() {
        let text = b"the same line again and again\n".repeat(500);
        for e in [Encoding::Gzip, Encoding::Zstd] {
            let c = compress(&text, e).unwrap();
            assert!(c.len() < text.len() / 5);
            assert_eq!(Encoding::from_name(e.name()), Some(e));
            assert_eq!(decompress(&c, e.name(), text.len()).unwrap(), text);
            assert!(
                decompress(&c, e.name(), text.len() - 1).is_err(),
                "a bomb past the size is refused"
            );
        }
        assert!(decompress(b"x", "br", 10).is_err());
    }
}
