//! Certificate credentials: loading a PEM certificate and its RSA private key, and signing the
//! client assertion JWT that Microsoft Entra ID accepts instead of a client secret.
//!
//! The JWT follows Microsoft's format (`o365-api.md` §3): header `alg` PS256 with `x5t#S256`
//! (base64url SHA-256 of the DER certificate), or RS256 with `x5t` (base64url SHA-1); claims
//! `aud` = the token URL, `iss` = `sub` = the client id, a unique `jti`, `nbf` = `iat` = now and
//! `exp` ten minutes later. A fresh assertion is signed for every token request.
//!
//! Private keys may be PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or passphrase-encrypted
//! PKCS#8 (`ENCRYPTED PRIVATE KEY`, PBES2). Every problem found while loading is a [`CertError`]
//! whose message names the file and the fix. Signing uses `ring` (constant-time RSA, already the
//! TLS provider); decryption of encrypted keys uses the RustCrypto `pkcs8` crate.

use crate::secret::Secret;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256};
use std::fmt;
use std::path::Path;
use x509_cert::der::Decode;
use zeroize::Zeroizing;

/// How long a client assertion is valid (`exp` - `iat`).
pub const ASSERTION_LIFETIME_SECS: i64 = 600;

/// `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// rsaEncryption (1.2.840.113549.1.1.1).
const RSA_ENCRYPTION_OID: &str = "1.2.840.113549.1.1.1";

/// Signature algorithm of a client assertion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AssertionAlg {
    /// RSASSA-PSS with SHA-256, header `x5t#S256` (current Microsoft docs; the default).
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, header `x5t` (SHA-1 thumbprint; older docs).
    Rs256,
}

impl AssertionAlg {
    /// The JWT `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionAlg::Ps256 => "PS256",
            AssertionAlg::Rs256 => "RS256",
        }
    }
}

/// Why a certificate or key could not be used. Each message names the file and the fix; none
/// contains key material or the passphrase.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The certificate file could not be read.
    #[error("cannot read the certificate file {path}: {reason}; check cert_path and the file's permissions")]
    ReadCert {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The key file could not be read.
    #[error("cannot read the private key file {path}: {reason}; check key_path and the file's permissions")]
    ReadKey {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// No certificate in the file, or not one that parses.
    #[error("the certificate file {path} holds no usable X.509 certificate ({reason}); give the certificate in PEM (-----BEGIN CERTIFICATE-----), e.g. `openssl x509 -inform der -in app.cer -out app.pem`")]
    BadCertificate {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The certificate's key is not RSA.
    #[error("the certificate in {path} does not hold an RSA public key; Entra ID certificate credentials used here must be RSA (2048 bits or more)")]
    NotRsa {
        /// The file.
        path: String,
    },
    /// No private key in the file, or not one that parses.
    #[error("the private key file {path} holds no usable RSA private key ({reason}); give a PEM key: PRIVATE KEY (PKCS#8), RSA PRIVATE KEY (PKCS#1) or ENCRYPTED PRIVATE KEY (PKCS#8 with passphrase)")]
    BadKey {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// An OpenSSL "traditional" encrypted key (`Proc-Type: 4,ENCRYPTED`).
    #[error("the private key file {path} is encrypted in OpenSSL's legacy format (Proc-Type: 4,ENCRYPTED), which is not supported; convert it to encrypted PKCS#8: `openssl pkcs8 -topk8 -v2 aes-256-cbc -in OLD.key -out NEW.key`")]
    LegacyEncryptedKey {
        /// The file.
        path: String,
    },
    /// The key is encrypted and no passphrase was given.
    #[error("the private key file {path} is encrypted: set passphrase (e.g. passphrase = \"${{KEY_PASS}}\") in the certificate's configuration")]
    PassphraseMissing {
        /// The file.
        path: String,
    },
    /// The passphrase does not decrypt the key.
    #[error("the private key file {path} cannot be decrypted with the passphrase given: check passphrase (and the variable it comes from)")]
    WrongPassphrase {
        /// The file.
        path: String,
    },
    /// The key is encrypted with something `pkcs8` does not implement.
    #[error("the private key file {path} is encrypted with an unsupported scheme ({reason}); re-encrypt it with `openssl pkcs8 -topk8 -v2 aes-256-cbc`")]
    UnsupportedEncryption {
        /// The file.
        path: String,
        /// The scheme.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("the private key in {key} does not match the certificate in {cert}: give the key the certificate was created with (compare `openssl x509 -noout -modulus -in CERT` with `openssl rsa -noout -modulus -in KEY`)")]
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// The certificate's validity has ended.
    #[error("the certificate in {path} ({subject}) expired on {not_after}: create a new certificate, upload it to the app registration and point cert_path at it")]
    Expired {
        /// The file.
        path: String,
        /// Its subject.
        subject: String,
        /// End of validity (RFC 3339).
        not_after: String,
    },
    /// The certificate's validity has not begun.
    #[error("the certificate in {path} ({subject}) is not valid before {not_before}: check this machine's clock, or wait until then")]
    NotYetValid {
        /// The file.
        path: String,
        /// Its subject.
        subject: String,
        /// Start of validity (RFC 3339).
        not_before: String,
    },
}

/// A certificate and the private key that signs client assertions with it.
///
/// `Debug` shows the subject and thumbprints only, never the key.
pub struct ClientCertificate {
    key: RsaKeyPair,
    cert_path: String,
    x5t: String,
    x5t_s256: String,
    sha1_hex: String,
    subject: String,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("subject", &self.subject)
            .field("thumbprint", &self.sha1_hex)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// One `-----BEGIN <label>-----` block.
struct PemBlock {
    label: String,
    headers: Vec<String>,
    der: Zeroizing<Vec<u8>>,
}

/// Why PEM text does not split into blocks.
#[derive(Debug, thiserror::Error)]
enum PemError {
    /// `BEGIN X` closed by `END Y`.
    #[error("PEM block BEGIN {begin} ends with END {end}")]
    Mismatched {
        /// The block's label.
        begin: String,
        /// The label its end names.
        end: String,
    },
    /// A body that does not decode.
    #[error("PEM block {label} is not valid base64: {error}")]
    Base64 {
        /// The block's label.
        label: String,
        /// The decoder's reason.
        error: base64::DecodeError,
    },
}

/// Splits PEM text into its blocks (several may share a file: key and certificate, or a chain).
fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, PemError> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, Vec<String>, Zeroizing<String>)> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_string(), Vec::new(), Zeroizing::new(String::new())));
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            if let Some((begin, headers, body)) = current.take() {
                if begin != label {
                    return Err(PemError::Mismatched {
                        begin,
                        end: label.to_owned(),
                    });
                }
                let der = match STANDARD.decode(body.as_bytes()) {
                    Ok(der) => der,
                    Err(error) => {
                        return Err(PemError::Base64 {
                            label: begin,
                            error,
                        })
                    }
                };
                blocks.push(PemBlock {
                    label: begin,
                    headers,
                    der: Zeroizing::new(der),
                });
            }
        } else if let Some((_, headers, body)) = current.as_mut() {
            if line.contains(':') {
                headers.push(line.to_string());
            } else {
                body.push_str(line);
            }
        }
    }
    Ok(blocks)
}

fn utc(t: x509_cert::time::Time) -> DateTime<Utc> {
    let d = t.to_unix_duration();
    DateTime::from_timestamp(d.as_secs() as i64, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn thumbprint(alg: &'static ring::digest::Algorithm, der: &[u8]) -> Vec<u8> {
    ring::digest::digest(alg, der).as_ref().to_vec()
}

/// The RSA private key of a key file, as a ring key pair.
fn parse_key(
    key_pem: &[u8],
    key_path: &str,
    passphrase: Option<&Secret>,
) -> Result<RsaKeyPair, CertError> {
    let bad = |reason: String| CertError::BadKey {
        path: key_path.to_string(),
        reason,
    };
    let text = Zeroizing::new(String::from_utf8_lossy(key_pem).into_owned());
    let blocks = pem_blocks(&text).map_err(|e| bad(e.to_string()))?;
    let block = blocks
        .iter()
        .find(|b| b.label.ends_with("PRIVATE KEY"))
        .ok_or_else(|| bad("no -----BEGIN ... PRIVATE KEY----- block".into()))?;
    let ring_err = |e: ring::error::KeyRejected| bad(format!("key rejected: {e}"));
    match block.label.as_str() {
        "RSA PRIVATE KEY" => {
            if block.headers.iter().any(|h| h.contains("ENCRYPTED")) {
                return Err(CertError::LegacyEncryptedKey {
                    path: key_path.to_string(),
                });
            }
            RsaKeyPair::from_der(&block.der).map_err(ring_err)
        }
        "PRIVATE KEY" => pkcs8_to_ring(&block.der, key_path),
        "ENCRYPTED PRIVATE KEY" => {
            let Some(pass) = passphrase.filter(|p| !p.is_empty()) else {
                return Err(CertError::PassphraseMissing {
                    path: key_path.to_string(),
                });
            };
            let info = pkcs8::EncryptedPrivateKeyInfo::try_from(block.der.as_slice())
                .map_err(|e| bad(format!("encrypted PKCS#8 does not parse: {e}")))?;
            let doc = info.decrypt(pass.expose().as_bytes()).map_err(|e| {
                use pkcs8::pkcs5::Error as P5;
                match e {
                    pkcs8::Error::EncryptedPrivateKey(
                        other @ (P5::UnsupportedAlgorithm { .. }
                        | P5::AlgorithmParametersInvalid { .. }
                        | P5::NoPbes1CryptSupport),
                    ) => CertError::UnsupportedEncryption {
                        path: key_path.to_string(),
                        reason: other.to_string(),
                    },
                    // Bad padding (pkcs5 reports it as DecryptFailed or EncryptFailed), or garbage
                    // DER when a wrong passphrase happens to leave valid padding.
                    _ => CertError::WrongPassphrase {
                        path: key_path.to_string(),
                    },
                }
            })?;
            pkcs8_to_ring(doc.as_bytes(), key_path).map_err(|e| match e {
                CertError::BadKey { .. } => CertError::WrongPassphrase {
                    path: key_path.to_string(),
                },
                other => other,
            })
        }
        "EC PRIVATE KEY" => Err(bad(
            "it is an EC key; Entra ID certificate credentials used here must be RSA".into(),
        )),
        other => Err(bad(format!("unsupported PEM block {other}"))),
    }
}

fn pkcs8_to_ring(der: &[u8], key_path: &str) -> Result<RsaKeyPair, CertError> {
    let bad = |reason: String| CertError::BadKey {
        path: key_path.to_string(),
        reason,
    };
    let info = pkcs8::PrivateKeyInfo::try_from(der)
        .map_err(|e| bad(format!("PKCS#8 does not parse: {e}")))?;
    if info.algorithm.oid.to_string() != RSA_ENCRYPTION_OID {
        return Err(bad(format!(
            "the key's algorithm is {}, not RSA",
            info.algorithm.oid
        )));
    }
    RsaKeyPair::from_der(info.private_key).map_err(|e| bad(format!("key rejected: {e}")))
}

impl ClientCertificate {
    /// Reads and checks a certificate file and its key file (see [`ClientCertificate::from_pem`]).
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        passphrase: Option<&Secret>,
        now: DateTime<Utc>,
    ) -> Result<ClientCertificate, CertError> {
        let cert_name = cert_path.display().to_string();
        let key_name = key_path.display().to_string();
        let cert_pem = std::fs::read(cert_path).map_err(|e| CertError::ReadCert {
            path: cert_name.clone(),
            reason: e.to_string(),
        })?;
        let key_pem = Zeroizing::new(std::fs::read(key_path).map_err(|e| CertError::ReadKey {
            path: key_name.clone(),
            reason: e.to_string(),
        })?);
        ClientCertificate::from_pem(&cert_pem, &cert_name, &key_pem, &key_name, passphrase, now)
    }

    /// Parses a certificate (PEM, or DER) and an RSA private key (PEM), checks that the key
    /// belongs to the certificate and that the certificate is valid at `now`. The names are used
    /// in error messages only.
    pub fn from_pem(
        cert_pem: &[u8],
        cert_name: &str,
        key_pem: &[u8],
        key_name: &str,
        passphrase: Option<&Secret>,
        now: DateTime<Utc>,
    ) -> Result<ClientCertificate, CertError> {
        let bad_cert = |reason: String| CertError::BadCertificate {
            path: cert_name.to_string(),
            reason,
        };
        let text = String::from_utf8_lossy(cert_pem);
        let der: Vec<u8> = if text.contains("-----BEGIN") {
            let blocks = pem_blocks(&text).map_err(|e| bad_cert(e.to_string()))?;
            let block = blocks
                .into_iter()
                .find(|b| b.label == "CERTIFICATE")
                .ok_or_else(|| bad_cert("no -----BEGIN CERTIFICATE----- block".into()))?;
            block.der.to_vec()
        } else {
            cert_pem.to_vec()
        };
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|e| bad_cert(format!("it does not parse: {e}")))?;
        let tbs = &cert.tbs_certificate;
        let spki = &tbs.subject_public_key_info;
        if spki.algorithm.oid.to_string() != RSA_ENCRYPTION_OID {
            return Err(CertError::NotRsa {
                path: cert_name.to_string(),
            });
        }
        let key = parse_key(key_pem, key_name, passphrase)?;
        // Both are DER RSAPublicKey (modulus, exponent): equal bytes, same key.
        if spki.subject_public_key.raw_bytes() != key.public().as_ref() {
            return Err(CertError::KeyMismatch {
                cert: cert_name.to_string(),
                key: key_name.to_string(),
            });
        }
        let sha1 = thumbprint(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        let sha256 = thumbprint(&ring::digest::SHA256, &der);
        let c = ClientCertificate {
            key,
            cert_path: cert_name.to_string(),
            x5t: URL_SAFE_NO_PAD.encode(&sha1),
            x5t_s256: URL_SAFE_NO_PAD.encode(&sha256),
            sha1_hex: sha1.iter().map(|b| format!("{b:02X}")).collect(),
            subject: tbs.subject.to_string(),
            not_before: utc(tbs.validity.not_before),
            not_after: utc(tbs.validity.not_after),
        };
        c.check_validity(now)?;
        Ok(c)
    }

    /// Whether the certificate is within its validity period at `now`.
    pub fn check_validity(&self, now: DateTime<Utc>) -> Result<(), CertError> {
        if now >= self.not_after {
            return Err(CertError::Expired {
                path: self.cert_path.clone(),
                subject: self.subject.clone(),
                not_after: self.not_after.to_rfc3339(),
            });
        }
        if now < self.not_before {
            return Err(CertError::NotYetValid {
                path: self.cert_path.clone(),
                subject: self.subject.clone(),
                not_before: self.not_before.to_rfc3339(),
            });
        }
        Ok(())
    }

    /// The SHA-1 thumbprint in upper-case hex, as the Azure portal shows it.
    pub fn thumbprint(&self) -> &str {
        &self.sha1_hex
    }

    /// The certificate's subject (`CN=...`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// End of the certificate's validity.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    /// The certificate file it came from.
    pub fn cert_path(&self) -> &str {
        &self.cert_path
    }

    /// Signs a client assertion for `client_id` at the token endpoint `token_url`.
    pub fn client_assertion(
        &self,
        alg: AssertionAlg,
        client_id: &str,
        token_url: &str,
        now: DateTime<Utc>,
    ) -> Result<Secret, CertError> {
        // Loading checked the start of validity; a long-running engine can outlive the end.
        if now >= self.not_after {
            return Err(CertError::Expired {
                path: self.cert_path.clone(),
                subject: self.subject.clone(),
                not_after: self.not_after.to_rfc3339(),
            });
        }
        let rng = SystemRandom::new();
        let header = match alg {
            AssertionAlg::Ps256 => {
                serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": self.x5t_s256})
            }
            AssertionAlg::Rs256 => {
                serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": self.x5t})
            }
        };
        let iat = now.timestamp();
        let claims = serde_json::json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid_v4(&rng),
            "nbf": iat,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        let padding: &'static dyn ring::signature::RsaEncoding = match alg {
            AssertionAlg::Ps256 => &RSA_PSS_SHA256,
            AssertionAlg::Rs256 => &RSA_PKCS1_SHA256,
        };
        self.key
            .sign(padding, &rng, signing_input.as_bytes(), &mut sig)
            .map_err(|_| CertError::BadKey {
                path: self.cert_path.clone(),
                reason: "signing failed".into(),
            })?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig)
        )))
    }
}

/// A random (version 4) UUID for `jti`.
fn uuid_v4(rng: &SystemRandom) -> String {
    let mut b = [0u8; 16];
    // SystemRandom fails only when the OS has no entropy source at all.
    if rng.fill(&mut b).is_err() {
        let t = Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128;
        b = (t ^ (std::process::id() as u128) << 64).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_split_with_headers() {
        let text = "junk\n-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAEC\n-----END RSA PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nAwQ=\n-----END CERTIFICATE-----\n";
        let b = pem_blocks(text).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].label, "RSA PRIVATE KEY");
        assert_eq!(b[0].headers.len(), 2);
        assert_eq!(b[0].der.as_slice(), &[0, 1, 2]);
        assert_eq!(b[1].der.as_slice(), &[3, 4]);
        assert!(pem_blocks("-----BEGIN X-----\n!!\n-----END X-----").is_err());
    }

    #[test]
    fn legacy_encrypted_and_missing_keys_are_named() {
        let legacy = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAEC\n-----END RSA PRIVATE KEY-----\n";
        let e = parse_key(legacy, "k.pem", None).unwrap_err();
        assert!(matches!(e, CertError::LegacyEncryptedKey { .. }), "{e}");
        let enc =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAEC\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = parse_key(enc, "k.pem", None).unwrap_err();
        assert!(
            e.to_string().contains("k.pem is encrypted: set passphrase"),
            "{e}"
        );
        let e = parse_key(b"nothing", "k.pem", None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the private key file k.pem holds no usable RSA private key"),
            "{e}"
        );
    }

    #[test]
    fn jti_is_a_fresh_uuid() {
        let rng = SystemRandom::new();
        let (a, b) = (uuid_v4(&rng), uuid_v4(&rng));
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
