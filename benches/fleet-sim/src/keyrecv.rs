//! The server's side of upstream's private key transport, written from the format's
//! definition and not shared with the provisioner: the server offers an X25519 public key
//! with its JWT; a delivered key is a legacy OpenSSL encrypted PEM (`Proc-Type: 4,ENCRYPTED`,
//! `DEK-Info: AES-256-CBC,<hex iv>`) whose AES key is EVP_BytesToKey(MD5) of the X25519 shared
//! secret, salted with the first 8 bytes of the IV.

use aes::cipher::{block_padding::Pkcs7, BlockModeDecrypt, KeyIvInit};
use base64::Engine;
use md5::{Digest, Md5};
use x25519_dalek::{PublicKey, StaticSecret};

/// A fresh X25519 pair: the secret stays with the server, the public half goes out hex.
pub fn offer() -> (StaticSecret, String) {
    let secret = StaticSecret::random_from_rng(&mut rand::rng());
    let public = hex::encode(PublicKey::from(&secret).as_bytes());
    (secret, public)
}

/// Decrypts a delivered key with our secret and the provisioner's `ecdh_public`; returns
/// the key's DER.
pub fn receive(pem: &str, ours: &StaticSecret, theirs_hex: &str) -> Result<Vec<u8>, String> {
    let theirs: [u8; 32] = hex::decode(theirs_hex)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or("ecdh_public is not a hex X25519 key")?;
    let secret = ours.diffie_hellman(&PublicKey::from(theirs));
    let mut encrypted = false;
    let mut iv = None;
    let mut body = String::new();
    let mut inside = false;
    for line in pem.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            inside = true;
        } else if line.starts_with("-----END ") {
            break;
        } else if !inside {
            continue;
        } else if line == "Proc-Type: 4,ENCRYPTED" {
            encrypted = true;
        } else if let Some(dek) = line.strip_prefix("DEK-Info: ") {
            let (cipher, iv_hex) = dek.split_once(',').ok_or("bad DEK-Info")?;
            if cipher != "AES-256-CBC" {
                return Err(format!("cipher {cipher} is not AES-256-CBC"));
            }
            let v: [u8; 16] = hex::decode(iv_hex)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or("bad IV")?;
            iv = Some(v);
        } else if !line.contains(':') {
            body.push_str(line);
        }
    }
    if !encrypted {
        return Err("key is not encrypted".into());
    }
    let iv = iv.ok_or("no DEK-Info")?;
    let ct = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .map_err(|_| "key body is not base64")?;
    // EVP_BytesToKey: D1 = MD5(secret | salt), D2 = MD5(D1 | secret | salt), key = D1 | D2
    let salt = &iv[..8];
    let mut h = Md5::new();
    h.update(secret.as_bytes());
    h.update(salt);
    let d1 = h.finalize();
    let mut h = Md5::new();
    h.update(d1);
    h.update(secret.as_bytes());
    h.update(salt);
    let d2 = h.finalize();
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&d1);
    key[16..].copy_from_slice(&d2);
    cbc::Decryptor::<aes::Aes256>::new(&key.into(), &iv.into())
        .decrypt_padded_vec::<Pkcs7>(&ct)
        .map_err(|_| "could not decrypt the key (wrong secret?)".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn garbage_is_refused_not_decrypted() {
        let (ours, _) = super::offer();
        let (_, theirs) = super::offer();
        let enc = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00112233445566778899aabbccddeeff\n\nAAAAAAAAAAAAAAAAAAAAAA==\n-----END RSA PRIVATE KEY-----\n";
        for (pem, key) in [
            ("", theirs.as_str()),
            ("not a pem at all", theirs.as_str()),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                theirs.as_str(),
            ),
            (&enc.replace("AES-256-CBC", "DES-CBC"), theirs.as_str()),
            (&enc.replace("00112233", "zz"), theirs.as_str()),
            (enc, "not hex"),
        ] {
            assert!(super::receive(pem, &ours, key).is_err(), "accepted {pem:?}");
        }
    }
}
