//! Private key transport, as upstream does it: when the helper returns a private `key` for a
//! server, it never travels in clear. The server sent its X25519 public key with
//! `choria_provision#jwt` (`ecdh_public`); we make our own X25519 pair, derive the shared
//! secret, and encrypt the key as a legacy OpenSSL encrypted PEM (`Proc-Type: 4,ENCRYPTED`,
//! `DEK-Info: AES-256-CBC,<iv>`, the AES key derived from the secret with EVP_BytesToKey/MD5
//! salted by the IV's first 8 bytes), which is what Go's `x509.EncryptPEMBlock` makes and
//! the server's `x509.DecryptPEMBlock` reads. Our public key goes in `configure` as
//! `ecdh_public`.

use aes::cipher::{block_padding::Pkcs7, BlockModeEncrypt, KeyIvInit};
use base64::Engine;
use md5::{Digest, Md5};
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};

#[derive(Debug, Error)]
pub enum KeyWrapError {
    #[error("private key received from helper but server did not start Diffie-Hellman exchange")]
    NoExchange,
    #[error("the server's ecdh_public is not a hex X25519 key")]
    BadServerKey,
    #[error("the helper's key is not a PEM block")]
    BadKey,
}

/// The encrypted key and our public key, both as `configure` takes them.
pub struct Wrapped {
    pub pem: String,
    pub ecdh_public: String,
}

/// Encrypts the PEM `key` for the server whose X25519 public key is `server_hex`.
pub fn wrap(key: &str, server_hex: &str) -> Result<Wrapped, KeyWrapError> {
    if server_hex.is_empty() {
        return Err(KeyWrapError::NoExchange);
    }
    let server: [u8; 32] = hex::decode(server_hex)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(KeyWrapError::BadServerKey)?;
    let der = pem_body(key).ok_or(KeyWrapError::BadKey)?;
    let ours = StaticSecret::random_from_rng(&mut rand::rng());
    let secret = ours.diffie_hellman(&PublicKey::from(server));
    let iv: [u8; 16] = rand::random();
    Ok(Wrapped {
        pem: encrypt_pem(&der, secret.as_bytes(), &iv),
        ecdh_public: hex::encode(PublicKey::from(&ours).as_bytes()),
    })
}

/// The base64 body of the first PEM block in `text`, decoded (headers, if any, skipped).
fn pem_body(text: &str) -> Option<Vec<u8>> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start..];
    let body_start = rest.find('\n')? + 1;
    let end = rest.find("-----END ")?;
    let body: String = rest
        .get(body_start..end)?
        .lines()
        .filter(|l| !l.contains(':'))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
        .filter(|d| !d.is_empty())
}

/// OpenSSL's EVP_BytesToKey with MD5 and one round, for a 32-byte key.
fn bytes_to_key(password: &[u8], salt: &[u8]) -> [u8; 32] {
    let d1 = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .finalize();
    let d2 = Md5::new()
        .chain_update(d1)
        .chain_update(password)
        .chain_update(salt)
        .finalize();
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&d1);
    key[16..].copy_from_slice(&d2);
    key
}

/// A legacy encrypted PEM block, labelled as upstream labels it.
fn encrypt_pem(der: &[u8], password: &[u8], iv: &[u8; 16]) -> String {
    let key = bytes_to_key(password, &iv[..8]);
    let ct =
        cbc::Encryptor::<aes::Aes256>::new(&key.into(), iv.into()).encrypt_padded_vec::<Pkcs7>(der);
    let b64 = base64::engine::general_purpose::STANDARD.encode(ct);
    let mut out = String::from(
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,",
    );
    out.push_str(&hex::encode(iv));
    out.push_str("\n\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END RSA PRIVATE KEY-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_derivation_matches_openssl() {
        // `openssl enc -aes-256-cbc -md md5 -S 0102030405060708 -pass pass:secret -P`
        let key = bytes_to_key(b"secret", &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            hex::encode_upper(key),
            "C9E5A1BD216DBE1317E230CEF48F38EE7F0E17AD64022144BCCEC4A1AA2879AB"
        );
    }

    #[test]
    fn the_server_can_decrypt_what_we_wrap() {
        use aes::cipher::BlockModeDecrypt;
        let server = StaticSecret::random_from_rng(&mut rand::rng());
        let server_pub = hex::encode(PublicKey::from(&server).as_bytes());
        let key_pem =
            "-----BEGIN PRIVATE KEY-----\naGVsbG8gcHJpdmF0ZSBrZXk=\n-----END PRIVATE KEY-----\n";
        let w = wrap(key_pem, &server_pub).unwrap();
        assert!(!w.pem.contains("aGVsbG8gcHJpdmF0ZSBrZXk"));
        assert!(w.pem.contains("Proc-Type: 4,ENCRYPTED"));
        // the server's side: its secret and our public key give the same secret
        let ours: [u8; 32] = hex::decode(&w.ecdh_public).unwrap().try_into().unwrap();
        let secret = server.diffie_hellman(&PublicKey::from(ours));
        let iv_hex = w
            .pem
            .split("AES-256-CBC,")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap();
        let iv: [u8; 16] = hex::decode(iv_hex).unwrap().try_into().unwrap();
        let ct = pem_body(&w.pem).unwrap();
        let key = bytes_to_key(secret.as_bytes(), &iv[..8]);
        let plain = cbc::Decryptor::<aes::Aes256>::new(&key.into(), &iv.into())
            .decrypt_padded_vec::<Pkcs7>(&ct)
            .unwrap();
        assert_eq!(plain, b"hello private key");
        // no exchange, or garbage, is an error and never a clear key
        assert!(matches!(wrap(key_pem, ""), Err(KeyWrapError::NoExchange)));
        assert!(matches!(
            wrap(key_pem, "zz"),
            Err(KeyWrapError::BadServerKey)
        ));
        assert!(matches!(
            wrap("not pem", &server_pub),
            Err(KeyWrapError::BadKey)
        ));
    }

    #[test]
    fn openssl_reads_our_encrypted_pem() {
        // OpenSSL is the reference for this legacy format: it must decrypt what we write
        // with the right password and refuse a wrong one
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("k.pem");
        let run = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl is installed (scripts/setup)")
        };
        let out = run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            plain.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        let der = pem_body(&std::fs::read_to_string(&plain).unwrap()).unwrap();
        let enc = dir.path().join("k.enc.pem");
        std::fs::write(&enc, encrypt_pem(&der, b"s3cret", &rand::random())).unwrap();
        // the same key comes out (compared by its public half: openssl re-encodes the rest)
        let public = |path: &std::path::Path, pass: &str| {
            let p = path.to_str().unwrap();
            run(&[
                "pkey", "-in", p, "-passin", pass, "-pubout", "-outform", "DER",
            ])
        };
        let want = public(&plain, "pass:");
        let got = public(&enc, "pass:s3cret");
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert!(!want.stdout.is_empty());
        assert_eq!(got.stdout, want.stdout);
        let out = run(&[
            "pkey",
            "-in",
            enc.to_str().unwrap(),
            "-passin",
            "pass:wrong",
            "-outform",
            "DER",
        ]);
        assert!(!out.status.success());
    }
}
