//! Checksums of bytes on the wire and at rest: MD5 (the seed's chunk checksum), SHA-256 and
//! CRC32C (Castagnoli), the headers that carry them, and which of them a reader checks first.

use md5::Md5;
use sha2::{Digest, Sha256};

/// Header with the hex MD5 of a response or request body.
pub const MD5_HEADER: &str = "x-checksum-md5";
/// Header with the hex SHA-256 (plain, not the Git object encoding) of a response body.
pub const SHA256_HEADER: &str = "x-checksum-sha256";
/// Header with the CRC32C of a response body, as 8 hex digits.
pub const CRC32C_HEADER: &str = "x-checksum-crc32c";

/// A checksum algorithm a body may be checked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// CRC32C: runs at memory speed (SSE4.2/PCLMUL); catches every burst error up to 32 bits.
    Crc32c,
    /// SHA-256: fast with the CPU's SHA extensions.
    Sha256,
    /// MD5: the slowest; what the seed's stream chunks carry.
    Md5,
}

impl Algorithm {
    /// The algorithms in the order a reader checks them: the cheapest first. One check is
    /// enough, since every header a server sends covers the same bytes.
    pub const CHEAPEST_FIRST: [Algorithm; 3] =
        [Algorithm::Crc32c, Algorithm::Sha256, Algorithm::Md5];

    /// The header that carries this checksum.
    pub fn header(self) -> &'static str {
        match self {
            Algorithm::Crc32c => CRC32C_HEADER,
            Algorithm::Sha256 => SHA256_HEADER,
            Algorithm::Md5 => MD5_HEADER,
        }
    }

    /// The checksum of `data` as it travels in the header (lowercase hex).
    pub fn hex_digest(self, data: &[u8]) -> String {
        match self {
            Algorithm::Crc32c => crc32c_hex(data),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data)),
            Algorithm::Md5 => md5_hex(data),
        }
    }
}

/// Bytes whose checksum is not the one announced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checksum mismatch: expected {expected}, got {actual}")]
pub struct Mismatch {
    /// What the sender announced.
    pub expected: String,
    /// What the bytes hash to.
    pub actual: String,
}

/// Checks `data` against the cheapest checksum that `header` (a header lookup by name) has.
/// Bodies without any checksum header pass.
pub fn verify_cheapest<'h>(
    header: impl Fn(&str) -> Option<&'h str>,
    data: &[u8],
) -> Result<(), Mismatch> {
    let Some((algorithm, expected)) = Algorithm::CHEAPEST_FIRST
        .into_iter()
        .find_map(|a| header(a.header()).map(|v| (a, v)))
    else {
        return Ok(());
    };
    let actual = algorithm.hex_digest(data);
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(Mismatch {
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Hex MD5 of some bytes.
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// The CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// The CRC32C of `data` as its header carries it: 8 lowercase hex digits.
pub fn crc32c_hex(data: &[u8]) -> String {
    format!("{:08x}", crc32c(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        // The CRC32C check value of the standard test vector.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_hex(b"123456789"), "e3069283");
    }

    #[test]
    fn the_cheapest_present_header_is_the_one_checked() {
        let data = b"some bytes";
        let good_crc = crc32c_hex(data);
        let headers = [(CRC32C_HEADER, good_crc.as_str()), (MD5_HEADER, "wrong")];
        let lookup = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert!(verify_cheapest(lookup, data).is_ok());

        let headers = [(MD5_HEADER, "WRONG")];
        let lookup = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let err = verify_cheapest(lookup, data).unwrap_err();
        assert_eq!(err.actual, md5_hex(data));

        let upper = Algorithm::Sha256.hex_digest(data).to_uppercase();
        let headers = [(SHA256_HEADER, upper.as_str())];
        let lookup = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert!(verify_cheapest(lookup, data).is_ok());
        assert!(verify_cheapest(|_| None, data).is_ok());
    }
}
