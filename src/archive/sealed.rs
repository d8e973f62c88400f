//! The byte format of an encrypted archive object (`NETSYEN1`), independent of where the
//! data key comes from (docs/formats.md, "Encrypted objects").
//!
//! ```text
//! 0       "NETSYEN1"                  8 bytes; the last is the format version
//! 8       u32 LE  H                   length of the header
//! 12      header (H bytes)
//!           u8      algorithm          1 = AES-256-GCM, per-object key by HKDF-SHA256
//!           u32 LE  chunk size C       plaintext bytes per chunk (1 KiB ..= 16 MiB)
//!           [32]    salt               random, per object
//!           u16 LE + UTF-8             the key id that wrapped the data key
//!           u32 LE + bytes             the wrapped data key
//!           u16 LE  n, n times:        the key service's annotations, sorted by name
//!             u16 LE + UTF-8 name, u32 LE + bytes value
//! 12+H    chunks                       each: ciphertext of C plaintext bytes + 16-byte tag;
//!                                      the last holds 1..=C bytes (0 for an empty object)
//! ```
//!
//! The object key is `HKDF-SHA256(ikm = data key, salt, info = "netsy archive object v1")`,
//! so every object has its own key even when a data key is reused; the nonce of chunk `i`
//! is `i` (u64 BE) followed by four zero bytes. The associated data of chunk `i` is
//! `SHA-256(u32 LE len(path) ‖ path ‖ bytes 0..12+H) ‖ i (u64 BE) ‖ final (u8)`: an object
//! under another name, with an edited header, with chunks reordered, dropped or cut at the
//! end fails to decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"NETSYEN1";
pub const ALGORITHM: u8 = 1;
/// Plaintext bytes per chunk written.
pub const CHUNK: usize = 64 * 1024;
pub const TAG: usize = 16;
const MIN_CHUNK: u32 = 1024;
const MAX_CHUNK: u32 = 16 * 1024 * 1024;
const MAX_HEADER: u32 = 1024 * 1024;
const INFO: &[u8] = b"netsy archive object v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not encrypted (no NETSYEN1 header)")]
    NotEncrypted,
    #[error("encryption format version {found:?} is newer than this netsy reads (1)")]
    Version { found: u8 },
    #[error("the encryption header is cut short or malformed: {0}")]
    Header(&'static str),
    #[error("unknown encryption algorithm {0}")]
    Algorithm(u8),
    #[error("the object is cut short: {size} bytes cannot hold its chunks")]
    Truncated { size: u64 },
    #[error("chunk {index} fails authentication (the object was changed, cut, moved, or the key is wrong)")]
    Auth { index: u64 },
}

/// The parsed header of an encrypted object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub chunk_size: u32,
    pub salt: [u8; 32],
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
    pub annotations: Vec<(String, Vec<u8>)>,
}

impl Header {
    /// `MAGIC`, the length and the header: the object's first bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(64 + self.key_id.len() + self.wrapped_key.len());
        h.push(ALGORITHM);
        h.extend_from_slice(&self.chunk_size.to_le_bytes());
        h.extend_from_slice(&self.salt);
        h.extend_from_slice(&(self.key_id.len() as u16).to_le_bytes());
        h.extend_from_slice(self.key_id.as_bytes());
        h.extend_from_slice(&(self.wrapped_key.len() as u32).to_le_bytes());
        h.extend_from_slice(&self.wrapped_key);
        let mut ann = self.annotations.clone();
        ann.sort();
        h.extend_from_slice(&(ann.len() as u16).to_le_bytes());
        for (k, v) in &ann {
            h.extend_from_slice(&(k.len() as u16).to_le_bytes());
            h.extend_from_slice(k.as_bytes());
            h.extend_from_slice(&(v.len() as u32).to_le_bytes());
            h.extend_from_slice(v);
        }
        let mut out = Vec::with_capacity(12 + h.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(h.len() as u32).to_le_bytes());
        out.extend_from_slice(&h);
        out
    }

    /// How many bytes the prefix (magic, length, header) takes, from the object's first
    /// 12 bytes or more.
    pub fn prefix_len(first: &[u8]) -> Result<usize, FormatError> {
        if first.len() < 8 || first[..7] != MAGIC[..7] {
            return Err(FormatError::NotEncrypted);
        }
        if first[7] != MAGIC[7] {
            return Err(FormatError::Version { found: first[7] });
        }
        let len = first.get(8..12).ok_or(FormatError::Header("no length"))?;
        let h = u32::from_le_bytes(len.try_into().expect("4 bytes"));
        if h > MAX_HEADER {
            return Err(FormatError::Header("header longer than 1 MiB"));
        }
        Ok(12 + h as usize)
    }

    /// Parses the prefix (exactly `prefix_len` bytes).
    pub fn decode(prefix: &[u8]) -> Result<Header, FormatError> {
        let total = Self::prefix_len(prefix)?;
        if prefix.len() != total {
            return Err(FormatError::Header("header length"));
        }
        let mut r = Reader(&prefix[12..]);
        let alg = r.u8()?;
        if alg != ALGORITHM {
            return Err(FormatError::Algorithm(alg));
        }
        let chunk_size = r.u32()?;
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
            return Err(FormatError::Header("chunk size out of range"));
        }
        let salt: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
        let n = r.u16()? as usize;
        let key_id = String::from_utf8(r.take(n)?.to_vec()).map_err(|_| FormatError::Header("key id is not UTF-8"))?;
        let n = r.u32()? as usize;
        let wrapped_key = r.take(n)?.to_vec();
        let count = r.u16()?;
        let mut annotations = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let n = r.u16()? as usize;
            let k = String::from_utf8(r.take(n)?.to_vec()).map_err(|_| FormatError::Header("annotation name is not UTF-8"))?;
            let n = r.u32()? as usize;
            annotations.push((k, r.take(n)?.to_vec()));
        }
        if !r.0.is_empty() {
            return Err(FormatError::Header("trailing bytes"));
        }
        Ok(Header {
            chunk_size,
            salt,
            key_id,
            wrapped_key,
            annotations,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Header("field past the end"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
}

/// Where the chunks of an object lie, from its size and its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub prefix: u64,
    pub chunk: u64,
    pub chunks: u64,
    pub plaintext: u64,
}

impl Layout {
    pub fn new(prefix: usize, chunk_size: u32, size: u64) -> Result<Layout, FormatError> {
        let (prefix, chunk) = (prefix as u64, chunk_size as u64);
        let body = size
            .checked_sub(prefix)
            .filter(|b| *b >= TAG as u64)
            .ok_or(FormatError::Truncated { size })?;
        let stride = chunk + TAG as u64;
        let chunks = body.div_ceil(stride);
        let last = body - (chunks - 1) * stride;
        if last < TAG as u64 || (last == TAG as u64 && chunks > 1) {
            return Err(FormatError::Truncated { size });
        }
        Ok(Layout {
            prefix,
            chunk,
            chunks,
            plaintext: body - chunks * TAG as u64,
        })
    }

    /// The byte range of chunk `i` in the object.
    pub fn chunk_range(&self, i: u64) -> std::ops::Range<u64> {
        let start = self.prefix + i * (self.chunk + TAG as u64);
        let end = if i + 1 == self.chunks {
            self.prefix + self.plaintext + self.chunks * TAG as u64
        } else {
            start + self.chunk + TAG as u64
        };
        start..end
    }
}

/// The key and the bound path and header of one object.
pub struct ObjectCipher {
    aead: Aes256Gcm,
    digest: [u8; 32],
}

impl ObjectCipher {
    /// `prefix` is the object's magic, length and header, as stored.
    pub fn new(data_key: &[u8; 32], salt: &[u8; 32], path: &str, prefix: &[u8]) -> ObjectCipher {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(salt), data_key);
        let mut key = [0u8; 32];
        hk.expand(INFO, &mut key).expect("32 bytes is a valid HKDF-SHA256 length");
        let mut d = Sha256::new();
        d.update((path.len() as u32).to_le_bytes());
        d.update(path.as_bytes());
        d.update(prefix);
        ObjectCipher {
            aead: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
            digest: d.finalize().into(),
        }
    }

    fn aad(&self, index: u64, last: bool) -> [u8; 41] {
        let mut aad = [0u8; 41];
        aad[..32].copy_from_slice(&self.digest);
        aad[32..40].copy_from_slice(&index.to_be_bytes());
        aad[40] = last as u8;
        aad
    }

    fn nonce(index: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&index.to_be_bytes());
        n
    }

    pub fn seal(&self, index: u64, last: bool, plaintext: &[u8], out: &mut Vec<u8>) {
        let aad = self.aad(index, last);
        let ct = self
            .aead
            .encrypt(Nonce::from_slice(&Self::nonce(index)), Payload { msg: plaintext, aad: &aad })
            .expect("AES-GCM encrypts any chunk under 64 GiB");
        out.extend_from_slice(&ct);
    }

    pub fn open(&self, index: u64, last: bool, chunk: &[u8]) -> Result<Vec<u8>, FormatError> {
        let aad = self.aad(index, last);
        self.aead
            .decrypt(Nonce::from_slice(&Self::nonce(index)), Payload { msg: chunk, aad: &aad })
            .map_err(|_| FormatError::Auth { index })
    }
}

/// Encrypts a whole object in memory: prefix, then every chunk.
pub fn seal_all(cipher: &ObjectCipher, prefix: &[u8], chunk_size: usize, plaintext: &[u8]) -> Vec<u8> {
    let chunks = plaintext.len().div_ceil(chunk_size).max(1);
    let mut out = Vec::with_capacity(prefix.len() + plaintext.len() + chunks * TAG);
    out.extend_from_slice(prefix);
    for i in 0..chunks {
        let part = &plaintext[(i * chunk_size).min(plaintext.len())..((i + 1) * chunk_size).min(plaintext.len())];
        cipher.seal(i as u64, i + 1 == chunks, part, &mut out);
    }
    out
}

/// Decrypts chunks `first..` of an object from `bytes`, which start at chunk `first`
/// and run to the end of chunk `first + n - 1`.
pub fn open_chunks(cipher: &ObjectCipher, layout: &Layout, first: u64, bytes: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(bytes.len());
    let base = layout.chunk_range(first).start;
    let mut i = first;
    while i < layout.chunks {
        let r = layout.chunk_range(i);
        let (s, e) = ((r.start - base) as usize, (r.end - base) as usize);
        if s >= bytes.len() {
            break;
        }
        let chunk = bytes.get(s..e).ok_or(FormatError::Truncated { size: bytes.len() as u64 })?;
        out.extend_from_slice(&cipher.open(i, i + 1 == layout.chunks, chunk)?);
        i += 1;
    }
    Ok(out)
}

/// Decrypts a whole object held in memory.
pub fn open_all(bytes: &[u8], path: &str, data_key: &[u8; 32]) -> Result<Vec<u8>, FormatError> {
    let n = Header::prefix_len(bytes)?;
    let prefix = bytes.get(..n).ok_or(FormatError::Header("cut short"))?;
    let header = Header::decode(prefix)?;
    let layout = Layout::new(n, header.chunk_size, bytes.len() as u64)?;
    let cipher = ObjectCipher::new(data_key, &header.salt, path, prefix);
    open_chunks(&cipher, &layout, 0, &bytes[n..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(chunk: u32) -> Header {
        Header {
            chunk_size: chunk,
            salt: [7; 32],
            key_id: "key-1".into(),
            wrapped_key: vec![1, 2, 3, 4],
            annotations: vec![("kms.example.com/v".into(), b"x".to_vec())],
        }
    }

    fn seal(path: &str, key: &[u8; 32], chunk: u32, data: &[u8]) -> Vec<u8> {
        let h = header(chunk);
        let prefix = h.encode();
        let cipher = ObjectCipher::new(key, &h.salt, path, &prefix);
        seal_all(&cipher, &prefix, chunk as usize, data)
    }

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = header(4096);
        let b = h.encode();
        assert_eq!(&b[..8], MAGIC);
        assert_eq!(Header::decode(&b).unwrap(), h);
        assert_eq!(Header::prefix_len(b"SQLite format 3"), Err(FormatError::NotEncrypted));
        let mut newer = b.clone();
        newer[7] = b'2';
        assert_eq!(Header::prefix_len(&newer), Err(FormatError::Version { found: b'2' }));
        for cut in 12..b.len() {
            let mut short = b[..cut].to_vec();
            short[8..12].copy_from_slice(&((cut - 12) as u32).to_le_bytes());
            assert!(Header::decode(&short).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn round_trips_at_every_size_around_chunk_boundaries() {
        let key = [9u8; 32];
        for len in [0usize, 1, 1023, 1024, 1025, 2047, 2048, 2049, 5000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let sealed = seal("epochs/1/wal/a.seg", &key, 1024, &data);
            let n = Header::prefix_len(&sealed).unwrap();
            let layout = Layout::new(n, 1024, sealed.len() as u64).unwrap();
            assert_eq!(layout.plaintext, len as u64);
            assert_eq!(open_all(&sealed, "epochs/1/wal/a.seg", &key).unwrap(), data, "{len}");
        }
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_detected() {
        let key = [3u8; 32];
        let data: Vec<u8> = (0..2500).map(|i| i as u8).collect();
        let sealed = seal("p", &key, 1024, &data);
        for cut in 0..sealed.len() {
            assert!(open_all(&sealed[..cut], "p", &key).is_err(), "cut at {cut}");
        }
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(open_all(&bad, "p", &key).is_err(), "flip at {i}");
        }
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0; TAG + 1]);
        assert!(open_all(&longer, "p", &key).is_err());
    }

    #[test]
    fn the_path_and_key_are_bound_and_chunks_cannot_move() {
        let key = [3u8; 32];
        let data = vec![5u8; 3000];
        let sealed = seal("epochs/1/wal/a.seg", &key, 1024, &data);
        assert!(matches!(
            open_all(&sealed, "epochs/1/wal/b.seg", &key),
            Err(FormatError::Auth { index: 0 })
        ));
        assert!(open_all(&sealed, "epochs/1/wal/a.seg", &[4u8; 32]).is_err());
        // Swap chunks 0 and 1 (both full).
        let n = Header::prefix_len(&sealed).unwrap();
        let layout = Layout::new(n, 1024, sealed.len() as u64).unwrap();
        let (a, b) = (layout.chunk_range(0), layout.chunk_range(1));
        let mut swapped = sealed[..n].to_vec();
        swapped.extend_from_slice(&sealed[b.start as usize..b.end as usize]);
        swapped.extend_from_slice(&sealed[a.start as usize..a.end as usize]);
        swapped.extend_from_slice(&sealed[b.end as usize..]);
        assert!(open_all(&swapped, "epochs/1/wal/a.seg", &key).is_err());
        // Dropping the last chunk makes the one before it last, which it was not.
        let last = layout.chunk_range(layout.chunks - 1);
        assert!(open_all(&sealed[..last.start as usize], "epochs/1/wal/a.seg", &key).is_err());
    }

    #[test]
    fn a_range_of_chunks_decrypts_alone() {
        let key = [1u8; 32];
        let data: Vec<u8> = (0..5000).map(|i| (i % 7) as u8).collect();
        let sealed = seal("s", &key, 1024, &data);
        let n = Header::prefix_len(&sealed).unwrap();
        let h = Header::decode(&sealed[..n]).unwrap();
        let layout = Layout::new(n, 1024, sealed.len() as u64).unwrap();
        let cipher = ObjectCipher::new(&key, &h.salt, "s", &sealed[..n]);
        let r = layout.chunk_range(2).start as usize..layout.chunk_range(4).end as usize;
        assert_eq!(open_chunks(&cipher, &layout, 2, &sealed[r]).unwrap(), data[2048..]);
    }
}
