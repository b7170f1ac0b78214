//! age encryption to X25519 recipients: standard binary age files, so `age -d -i IDENTITY`
//! opens them; decryption streams and stops at a caller-given plaintext cap.

use std::io::{ErrorKind, Read, Write};

use age::x25519::{Identity, Recipient};
use zeroize::Zeroizing;

use super::EnvelopeError;

/// Encrypts `plaintext` to every recipient as one binary age file. At least one recipient
/// is required.
pub fn encrypt(recipients: &[Recipient], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    encrypt_as("file", recipients, plaintext)
}

/// Decrypts an age file with `identity`, streaming, and refuses it as soon as its plaintext
/// exceeds `max_plaintext` bytes. The plaintext is zeroized when dropped.
pub fn decrypt(
    identity: &Identity,
    ciphertext: &[u8],
    max_plaintext: usize,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    decrypt_as("file", identity, ciphertext, max_plaintext)
}

/// Decrypts an age file with `identity` and encrypts its plaintext again to
/// `new_recipients` only (e.g. the recovery key and a replacement terminal's key).
pub fn reencrypt(
    identity: &Identity,
    ciphertext: &[u8],
    new_recipients: &[Recipient],
    max_plaintext: usize,
) -> Result<Vec<u8>, EnvelopeError> {
    if new_recipients.is_empty() {
        return Err(EnvelopeError::NoRecipients);
    }
    let plaintext = decrypt_as("file", identity, ciphertext, max_plaintext)?;
    encrypt_as("file", new_recipients, &plaintext)
}

/// [`encrypt`], naming the input in errors.
pub(crate) fn encrypt_as(
    what: &'static str,
    recipients: &[Recipient],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if recipients.is_empty() {
        return Err(EnvelopeError::NoRecipients);
    }
    let fail = |e: &dyn std::fmt::Display| EnvelopeError::Encrypt {
        what,
        reason: e.to_string(),
    };
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| fail(&e))?;
    // Header (~100 bytes per recipient), nonce, and a 16-byte tag per 64 KiB chunk.
    let overhead = 256 + 128 * recipients.len() + 16 * (plaintext.len() / 65_536 + 1);
    let mut out = Vec::with_capacity(plaintext.len().saturating_add(overhead));
    let mut writer = encryptor.wrap_output(&mut out).map_err(|e| fail(&e))?;
    writer.write_all(plaintext).map_err(|e| fail(&e))?;
    writer.finish().map_err(|e| fail(&e))?;
    Ok(out)
}

/// [`decrypt`], naming the input in errors.
pub(crate) fn decrypt_as(
    what: &'static str,
    identity: &Identity,
    ciphertext: &[u8],
    max_plaintext: usize,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let fail = || EnvelopeError::Decrypt { what };
    let decryptor = age::Decryptor::new_buffered(ciphertext).map_err(|_| fail())?;
    let mut reader = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|_| fail())?;
    // An age file's plaintext is always shorter than its ciphertext, so one allocation of
    // that size (or of the cap, if smaller) holds it all: the buffer never grows, and so
    // never leaves an un-zeroized copy of plaintext behind in freed memory.
    let cap = ciphertext.len().min(max_plaintext);
    let mut out = Zeroizing::new(vec![0u8; cap]);
    let mut filled = 0;
    loop {
        if filled == cap {
            // Full: the file must end here. One more byte means it is over the cap.
            let mut probe = [0u8; 1];
            return match read_some(&mut reader, &mut probe) {
                Ok(0) => {
                    out.truncate(filled);
                    Ok(out)
                }
                Ok(_) if cap == max_plaintext => Err(EnvelopeError::PlaintextTooLarge {
                    what,
                    max: max_plaintext,
                }),
                Ok(_) | Err(_) => Err(fail()),
            };
        }
        match read_some(&mut reader, &mut out[filled..]) {
            Ok(0) => {
                out.truncate(filled);
                return Ok(out);
            }
            Ok(n) => filled += n,
            Err(_) => return Err(fail()),
        }
    }
}

/// One `read`, retried on interruption.
fn read_some(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Identity, Recipient) {
        let id = Identity::generate();
        let r = id.to_public();
        (id, r)
    }

    #[test]
    fn round_trip_is_a_standard_age_file() {
        let (id, r) = pair();
        let ct = encrypt(&[r], b"sales data").unwrap();
        assert!(ct.starts_with(b"age-encryption.org/v1\n"));
        assert_eq!(&decrypt(&id, &ct, 1024).unwrap()[..], b"sales data");
        // The age crate's own one-shot API reads it too.
        assert_eq!(age::decrypt(&id, &ct).unwrap(), b"sales data");
    }

    #[test]
    fn empty_and_multi_chunk_plaintexts_round_trip() {
        let (id, r) = pair();
        for len in [0usize, 1, 65_535, 65_536, 65_537, 200_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let ct = encrypt(std::slice::from_ref(&r), &plain).unwrap();
            assert_eq!(
                &decrypt(&id, &ct, len).unwrap()[..],
                &plain[..],
                "len {len}"
            );
        }
    }

    #[test]
    fn no_recipients_is_refused() {
        assert!(matches!(
            encrypt(&[], b"x"),
            Err(EnvelopeError::NoRecipients)
        ));
    }

    #[test]
    fn every_recipient_can_decrypt() {
        let (a, ra) = pair();
        let (b, rb) = pair();
        let (c, _) = pair();
        let ct = encrypt(&[ra, rb], b"both").unwrap();
        assert_eq!(&decrypt(&a, &ct, 64).unwrap()[..], b"both");
        assert_eq!(&decrypt(&b, &ct, 64).unwrap()[..], b"both");
        assert!(matches!(
            decrypt(&c, &ct, 64),
            Err(EnvelopeError::Decrypt { .. })
        ));
    }

    #[test]
    fn wrong_identity_gets_no_detail() {
        let (_, r) = pair();
        let (other, _) = pair();
        let ct = encrypt(&[r], b"secret").unwrap();
        let err = decrypt(&other, &ct, 64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot decrypt file (wrong key or damaged file)"
        );
    }

    #[test]
    fn damage_anywhere_is_refused() {
        let (id, r) = pair();
        let plain = vec![5u8; 70_000];
        let ct = encrypt(&[r], &plain).unwrap();
        for pos in [0, 30, ct.len() / 2, ct.len() - 1] {
            let mut bad = ct.clone();
            bad[pos] ^= 0x01;
            assert!(
                matches!(
                    decrypt(&id, &bad, 1 << 20),
                    Err(EnvelopeError::Decrypt { .. })
                ),
                "flip at {pos}"
            );
        }
        // Truncated: whole chunk gone, or part of one.
        for cut in [ct.len() - 1, ct.len() - 4_000] {
            assert!(decrypt(&id, &ct[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        assert!(decrypt(&id, b"", 10).is_err());
        assert!(decrypt(&id, b"not an age file at all", 10).is_err());
    }

    #[test]
    fn plaintext_over_the_cap_is_refused() {
        let (id, r) = pair();
        let ct = encrypt(&[r], &[1u8; 1000]).unwrap();
        assert_eq!(decrypt(&id, &ct, 1000).unwrap().len(), 1000);
        let err = decrypt(&id, &ct, 999).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::PlaintextTooLarge { max: 999, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("999 bytes"), "{err}");
        assert!(matches!(
            decrypt(&id, &ct, 0),
            Err(EnvelopeError::PlaintextTooLarge { max: 0, .. })
        ));
    }

    /// The standard `age` tool reads what we write, and we read what it writes
    /// (`scripts/test.sh` installs Debian's `age` package).
    #[test]
    fn interoperates_with_the_age_tool() {
        use age::secrecy::ExposeSecret;
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let (id, r) = pair();
        let (other, r_other) = pair();
        let id_file = dir.path().join("identity.txt");
        std::fs::write(&id_file, format!("{}\n", id.to_string().expose_secret())).unwrap();
        let plain: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();

        let ct_file = dir.path().join("ours.age");
        std::fs::write(&ct_file, encrypt(&[r_other, r.clone()], &plain).unwrap()).unwrap();
        let out = Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&id_file)
            .arg(&ct_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, plain);

        let plain_file = dir.path().join("plain");
        std::fs::write(&plain_file, &plain).unwrap();
        let out = Command::new("age")
            .arg("-r")
            .arg(r.to_string())
            .arg(&plain_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            &decrypt(&id, &out.stdout, plain.len()).unwrap()[..],
            &plain[..]
        );
        assert!(decrypt(&other, &out.stdout, plain.len()).is_err());
    }

    #[test]
    fn reencrypt_moves_to_new_recipients_only() {
        let (old, r_old) = pair();
        let (new, r_new) = pair();
        let (recovery, r_recovery) = pair();
        let ct = encrypt(&[r_old, r_recovery.clone()], b"db").unwrap();
        let moved = reencrypt(&recovery, &ct, &[r_new, r_recovery], 16).unwrap();
        assert_eq!(&decrypt(&new, &moved, 16).unwrap()[..], b"db");
        assert_eq!(&decrypt(&recovery, &moved, 16).unwrap()[..], b"db");
        assert!(matches!(
            decrypt(&old, &moved, 16),
            Err(EnvelopeError::Decrypt { .. })
        ));
        assert!(matches!(
            reencrypt(&recovery, &ct, &[], 16),
            Err(EnvelopeError::NoRecipients)
        ));
        assert!(matches!(
            reencrypt(&recovery, &ct, &[pair().1], 1),
            Err(EnvelopeError::PlaintextTooLarge { .. })
        ));
    }
}
