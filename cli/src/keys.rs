//! S3 access keys: drawn here, kept in the metaservers' replicated state.

use anyhow::{Context, Result};
use rand::Rng;
use tessera_client::MetaClient;
use tessera_proto::meta::MetaOp;

const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn draw(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// Creates a key with a fresh id (`TK` and 18 characters, like an AWS id)
/// and a 40-character secret (238 bits); returns both.
pub async fn create(
    client: &MetaClient,
    description: &str,
    all_buckets: bool,
) -> Result<(String, String)> {
    let id = format!("TK{}", draw(ID_ALPHABET, 18));
    let secret = draw(SECRET_ALPHABET, 40);
    client
        .call(MetaOp::CreateScopedAccessKey {
            id: id.clone(),
            secret: secret.clone(),
            description: description.to_string(),
            all_buckets,
        })
        .await
        .context("create the access key")?;
    Ok((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_keys_are_valid() {
        for _ in 0..100 {
            let id = format!("TK{}", draw(ID_ALPHABET, 18));
            let secret = draw(SECRET_ALPHABET, 40);
            tessera_proto::meta::validate_access_key(&id, &secret).unwrap();
        }
    }
}
