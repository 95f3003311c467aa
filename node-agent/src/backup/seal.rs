//! Client-side encryption of backup objects: AES-256-GCM (`ring`'s, as TLS here uses) over
//! chunks, so an object is sealed and opened as it streams and the bucket's owner reads
//! nothing of it.
//!
//! An object is a header, then chunks:
//! - header: `PSBKAES1` and the chunk size (u32, little-endian);
//! - each chunk: a random 96-bit nonce, then up to `chunk` bytes of ciphertext and the 16-byte
//!   tag. Every chunk but the last holds exactly `chunk` bytes of plaintext.
//!
//! Each chunk's associated data binds it to its object's key, its position and whether it is
//! the last: chunks cannot be swapped between objects, reordered, dropped or the object cut
//! short without opening failing. Nonces are random per chunk (never a counter that a retried
//! upload could reuse with other plaintext); 2^32 chunks of 1 MiB per key stay far inside
//! GCM's bounds for random nonces.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const MAGIC: &[u8; 8] = b"PSBKAES1";
/// Header length: magic and chunk size.
pub const HEADER: usize = 12;
const NONCE: usize = 12;
const TAG: usize = 16;
/// Plaintext per chunk.
pub const CHUNK: usize = 1 << 20;
/// The largest chunk size an object may declare.
const MAX_CHUNK: usize = 16 << 20;

/// A 256-bit key, read from the encryption-key Secret (base64 of 32 bytes).
#[derive(Clone)]
pub struct SealKey(Arc<LessSafeKey>, [u8; 8]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != 32 {
            return Err(format!(
                "an encryption key has 32 bytes, this one {}",
                bytes.len()
            ));
        }
        use sha2::Digest;
        let mut id = [0u8; 8];
        let digest = sha2::Sha256::new()
            .chain_update(b"projstore backup key id\0")
            .chain_update(bytes)
            .finalize();
        id.copy_from_slice(&digest[..8]);
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| "the key is not an AES-256 key".to_owned())?;
        Ok(Self(Arc::new(LessSafeKey::new(key)), id))
    }

    /// A short public name of the key (a hash of it): which key an interrupted upload
    /// sealed its parts with.
    pub fn id(&self) -> String {
        hex::encode(self.1)
    }

    /// From the Secret's `key` value: base64 (standard alphabet) of 32 bytes.
    pub fn from_base64(text: &[u8]) -> Result<Self, String> {
        use base64::Engine;
        let text = std::str::from_utf8(text).map_err(|_| "the key is not base64 text")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| format!("the key is not base64: {e}"))?;
        Self::new(&bytes)
    }
}

fn aad(object: &str, index: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(object.len() + 9);
    a.extend_from_slice(object.as_bytes());
    a.extend_from_slice(&index.to_be_bytes());
    a.push(u8::from(last));
    a
}

/// Seals one object as its plaintext arrives.
pub struct Sealer {
    key: SealKey,
    object: String,
    index: u64,
    pending: BytesMut,
    header_done: bool,
}

impl Sealer {
    /// `object` is the object's key in the bucket (bound into every chunk).
    pub fn new(key: SealKey, object: &str) -> Self {
        Self {
            key,
            object: object.to_owned(),
            index: 0,
            pending: BytesMut::new(),
            header_done: false,
        }
    }

    fn header(&mut self, out: &mut BytesMut) {
        if !self.header_done {
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&(CHUNK as u32).to_le_bytes());
            self.header_done = true;
        }
    }

    fn seal(&mut self, plain: &[u8], last: bool, out: &mut BytesMut) -> Result<(), String> {
        let mut nonce = [0u8; NONCE];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "no random nonce to be had".to_owned())?;
        out.extend_from_slice(&nonce);
        // Sealed in place, where it is sent from.
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .key
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&self.object, self.index, last)),
                &mut out[start..],
            )
            .map_err(|_| "encryption failed".to_owned())?;
        out.extend_from_slice(tag.as_ref());
        self.index += 1;
        Ok(())
    }

    /// Takes plaintext; appends whatever is sealed so far to `out`. A full chunk is sealed
    /// only once more plaintext follows it (the last chunk is marked as such).
    pub fn update(&mut self, plain: &[u8], out: &mut BytesMut) -> Result<(), String> {
        self.header(out);
        self.pending.extend_from_slice(plain);
        while self.pending.len() > CHUNK {
            let chunk = self.pending.split_to(CHUNK);
            self.seal(&chunk, false, out)?;
        }
        Ok(())
    }

    /// More plaintext follows: the chunk held back (a whole one) is sealed now.
    pub fn more_follows(&mut self, out: &mut BytesMut) -> Result<(), String> {
        if self.pending.len() != CHUNK {
            return Err(format!(
                "a part must end on a chunk boundary ({} bytes pending)",
                self.pending.len()
            ));
        }
        let chunk = self.pending.split_to(CHUNK);
        self.seal(&chunk, false, out)
    }

    /// Seals the rest as the last chunk.
    pub fn finish(mut self, out: &mut BytesMut) -> Result<(), String> {
        self.header(out);
        let rest = std::mem::take(&mut self.pending);
        self.seal(&rest, true, out)
    }
}

/// The stored size of an object of `plain` bytes.
pub fn sealed_len(plain: u64) -> u64 {
    let chunks = plain.div_ceil(CHUNK as u64).max(1);
    HEADER as u64 + plain + chunks * (NONCE + TAG) as u64
}

/// Opens one object as its ciphertext arrives.
pub struct Opener {
    key: SealKey,
    object: String,
    index: u64,
    chunk: Option<usize>,
    buf: BytesMut,
    done: bool,
}

impl Opener {
    pub fn new(key: SealKey, object: &str) -> Self {
        Self {
            key,
            object: object.to_owned(),
            index: 0,
            chunk: None,
            buf: BytesMut::new(),
            done: false,
        }
    }

    fn open(&mut self, sealed: &[u8], last: bool) -> Result<Bytes, String> {
        let (nonce, body) = sealed.split_at(NONCE);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| format!("chunk {} of {} has no nonce", self.index, self.object))?;
        let mut plain = body.to_vec();
        let len = self
            .key
            .0
            .open_in_place(
                nonce,
                Aad::from(aad(&self.object, self.index, last)),
                &mut plain,
            )
            .map(|p| p.len())
            .map_err(|_| {
                format!(
                    "chunk {} of {} does not open with the key: corrupted, truncated, reordered or not ours",
                    self.index, self.object
                )
            })?;
        plain.truncate(len);
        self.index += 1;
        Ok(Bytes::from(plain))
    }

    /// Takes ciphertext; returns the plaintext of every chunk complete so far except one
    /// (which may be the last: only [`Opener::finish`] knows).
    pub fn update(&mut self, sealed: &[u8]) -> Result<Vec<Bytes>, String> {
        if self.done {
            return Err(format!("data after the last chunk of {}", self.object));
        }
        self.buf.extend_from_slice(sealed);
        let chunk = match self.chunk {
            Some(c) => c,
            None => {
                if self.buf.len() < HEADER {
                    return Ok(Vec::new());
                }
                if &self.buf[..MAGIC.len()] != MAGIC {
                    return Err(format!("{} is not an encrypted backup object", self.object));
                }
                let mut size = [0u8; 4];
                size.copy_from_slice(&self.buf[MAGIC.len()..HEADER]);
                let size = u32::from_le_bytes(size) as usize;
                if size == 0 || size > MAX_CHUNK {
                    return Err(format!("{} declares chunks of {size} bytes", self.object));
                }
                self.buf.advance(HEADER);
                self.chunk = Some(size);
                size
            }
        };
        let whole = NONCE + chunk + TAG;
        let mut out = Vec::new();
        // A whole chunk followed by at least one more byte is not the last.
        while self.buf.len() > whole {
            let sealed = self.buf.split_to(whole);
            out.push(self.open(&sealed, false)?);
        }
        Ok(out)
    }

    /// The object ended: what is left must be its last chunk.
    pub fn finish(mut self) -> Result<Bytes, String> {
        if self.chunk.is_none() || self.buf.len() < NONCE + TAG {
            return Err(format!("{} ends before its last chunk", self.object));
        }
        let rest = std::mem::take(&mut self.buf);
        self.done = true;
        self.open(&rest, true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key() -> SealKey {
        SealKey::new(&[7u8; 32]).unwrap()
    }

    fn seal_all(plain: &[u8], object: &str, step: usize) -> Vec<u8> {
        let mut s = Sealer::new(key(), object);
        let mut out = BytesMut::new();
        for piece in plain.chunks(step.max(1)) {
            s.update(piece, &mut out).unwrap();
        }
        s.finish(&mut out).unwrap();
        out.to_vec()
    }

    fn open_all(sealed: &[u8], object: &str, step: usize) -> Result<Vec<u8>, String> {
        let mut o = Opener::new(key(), object);
        let mut plain = Vec::new();
        for piece in sealed.chunks(step.max(1)) {
            for b in o.update(piece)? {
                plain.extend_from_slice(&b);
            }
        }
        plain.extend_from_slice(&o.finish()?);
        Ok(plain)
    }

    /// A chunk sealed by the implementation before this one (RustCrypto's `aes-gcm` 0.10):
    /// objects already in buckets still open.
    #[test]
    fn a_chunk_sealed_before_still_opens() {
        let object = "bench/data/full--x";
        let mut sealed = MAGIC.to_vec();
        sealed.extend_from_slice(&(CHUNK as u32).to_le_bytes());
        sealed.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        sealed.extend(
            hex::decode("cb0e87f4199e8d5e801e607ff6ccd630b8e1ec4098fb637e9362c072462f7c2c")
                .unwrap(),
        );
        assert_eq!(open_all(&sealed, object, 7).unwrap(), b"projstore backup");
        assert!(open_all(&sealed, "bench/data/other", 7).is_err());
    }

    #[test]
    fn round_trips_at_every_size_around_chunk_boundaries() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 17] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for step in [4096, 65536 + 3, CHUNK + 5] {
                let sealed = seal_all(&plain, "ns/p/full--a.zstream", step);
                assert_eq!(sealed.len() as u64, sealed_len(len as u64), "len {len}");
                let opened = open_all(&sealed, "ns/p/full--a.zstream", 7777).unwrap();
                assert!(opened == plain, "len {len} step {step}");
            }
        }
    }

    #[test]
    fn tampering_of_any_kind_fails_to_open() {
        let plain: Vec<u8> = (0..(2 * CHUNK + 100)).map(|i| (i % 13) as u8).collect();
        let object = "ns/p/full--a.zstream";
        let sealed = seal_all(&plain, object, CHUNK);
        // A flipped byte anywhere after the header.
        for at in [HEADER, HEADER + 20, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(open_all(&bad, object, 4096).is_err(), "flip at {at}");
        }
        // Cut after a whole chunk (the rest would look like a complete object).
        let whole = NONCE + CHUNK + TAG;
        assert!(open_all(&sealed[..HEADER + whole], object, 4096).is_err());
        assert!(open_all(&sealed[..sealed.len() - 1], object, 4096).is_err());
        // Another object's name.
        assert!(open_all(&sealed, "ns/p/a--b.zstream", 4096).is_err());
        // Chunks swapped.
        let mut swapped = sealed[..HEADER].to_vec();
        swapped.extend_from_slice(&sealed[HEADER + whole..HEADER + 2 * whole]);
        swapped.extend_from_slice(&sealed[HEADER..HEADER + whole]);
        swapped.extend_from_slice(&sealed[HEADER + 2 * whole..]);
        assert!(open_all(&swapped, object, 4096).is_err());
        // Another key.
        let mut o = Opener::new(SealKey::new(&[8u8; 32]).unwrap(), object);
        let r = o.update(&sealed).and_then(|_| o.finish().map(|_| ()));
        assert!(r.is_err());
        // Plaintext is not an object.
        assert!(open_all(&plain, object, 4096).is_err());
    }

    #[test]
    fn no_plaintext_survives_sealing() {
        let marker = b"the tenant's secret thesis paragraph";
        let mut plain = Vec::new();
        for _ in 0..1000 {
            plain.extend_from_slice(marker);
        }
        let sealed = seal_all(&plain, "o", 999);
        assert!(!sealed.windows(marker.len()).any(|w| w == marker));
    }

    #[test]
    fn keys_are_read_from_base64_of_32_bytes() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert!(SealKey::from_base64(format!("{b64}\n").as_bytes()).is_ok());
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        assert!(SealKey::from_base64(short.as_bytes()).is_err());
        assert!(SealKey::from_base64(b"not base64!").is_err());
    }
}
