//! Ed25519 keys in Genesis Mesh's file format, and the signature envelope of its signed
//! documents: `"signatures": [{"key_id", "sig"}]` over the canonical JSON of the document
//! without `signatures`.
//!
//! A key file is three lines: `# Ed25519 Private Key` (or `Public`), `# Key ID: <id>`,
//! then the base64 of the 32-byte seed (or public key). Loaders skip `#` lines.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{json, Value};

use super::{canonical, MeshError};

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s.trim()).ok()
}

/// A public key from its base64 form.
pub fn public_key(b64: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = unb64(b64)?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

pub fn public_b64(key: &SigningKey) -> String {
    b64(key.verifying_key().as_bytes())
}

/// A new random key.
pub fn generate() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

fn key_bytes(path: &Path) -> Result<[u8; 32], MeshError> {
    let text = std::fs::read_to_string(path).map_err(|e| MeshError::KeyFile {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("");
    unb64(&body)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| MeshError::KeyFile {
            path: path.display().to_string(),
            msg: "is not the base64 of a 32-byte Ed25519 key".into(),
        })
}

pub fn read_private(path: &Path) -> Result<SigningKey, MeshError> {
    Ok(SigningKey::from_bytes(&key_bytes(path)?))
}

pub fn read_public(path: &Path) -> Result<VerifyingKey, MeshError> {
    VerifyingKey::from_bytes(&key_bytes(path)?).map_err(|e| MeshError::KeyFile {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), MeshError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| MeshError::KeyFile {
        path: path.display().to_string(),
        msg: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

/// Writes `key` as `<stem>.key` (0600) and `<stem>.pub` in `dir`.
pub fn write_pair(dir: &Path, stem: &str, key_id: &str, key: &SigningKey) -> Result<(), MeshError> {
    write_file(
        &dir.join(format!("{stem}.key")),
        &format!("# Ed25519 Private Key\n# Key ID: {key_id}\n{}\n", b64(key.as_bytes())),
        0o600,
    )?;
    write_file(
        &dir.join(format!("{stem}.pub")),
        &format!("# Ed25519 Public Key\n# Key ID: {key_id}\n{}\n", public_b64(key)),
        0o644,
    )
}

/// The bytes a document's signatures cover: its canonical JSON without `signatures`.
pub fn signed_bytes(doc: &Value) -> Vec<u8> {
    let mut unsigned = doc.clone();
    if let Some(map) = unsigned.as_object_mut() {
        map.remove("signatures");
    }
    canonical::to_vec(&unsigned)
}

/// Signs `doc` (an object) in place: `signatures` becomes this one signature.
pub fn sign_document(doc: &mut Value, key_id: &str, key: &SigningKey) {
    let sig = key.sign(&signed_bytes(doc));
    if let Some(map) = doc.as_object_mut() {
        map.insert("signatures".into(), json!([{"key_id": key_id, "sig": b64(&sig.to_bytes())}]));
    }
}

/// Whether `sig_b64` is `key`'s signature of `bytes`.
pub fn verify(key: &VerifyingKey, bytes: &[u8], sig_b64: &str) -> bool {
    let Some(sig) = unb64(sig_b64).and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
        return false;
    };
    key.verify(bytes, &Signature::from_bytes(&sig)).is_ok()
}

/// Whether one of `doc`'s signatures is `key`'s.
pub fn verify_document(doc: &Value, key: &VerifyingKey) -> bool {
    let bytes = signed_bytes(doc);
    doc["signatures"]
        .as_array()
        .is_some_and(|sigs| sigs.iter().any(|s| s["sig"].as_str().is_some_and(|sig| verify(key, &bytes, sig))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_signatures_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = generate();
        write_pair(dir.path(), "na", "na-local", &key).expect("write");
        let back = read_private(&dir.path().join("na.key")).expect("read");
        assert_eq!(back.as_bytes(), key.as_bytes());
        let public = read_public(&dir.path().join("na.pub")).expect("read pub");
        let mut doc = json!({"b": 1, "a": "x"});
        sign_document(&mut doc, "na-local", &key);
        assert!(verify_document(&doc, &public));
        doc["a"] = json!("y");
        assert!(!verify_document(&doc, &public), "a changed field must break the signature");
        let text = std::fs::read_to_string(dir.path().join("na.key")).expect("text");
        assert!(text.starts_with("# Ed25519 Private Key\n# Key ID: na-local\n"));
    }

    #[test]
    fn garbage_key_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.key");
        std::fs::write(&p, "# Ed25519 Private Key\nnot base64!!\n").expect("write");
        let e = read_private(&p).expect_err("refused").to_string();
        assert!(e.contains("bad.key"), "{e}");
    }
}
