//! What every instance on one database must hold alike (decision S1): the wipe-certificate
//! signing key, the self-signed TLS identity and the consoles' SSH host key are kept in the
//! database, sealed under the
//! secret key that every instance is provisioned with (`RACKSHARE_SECRET_KEY` or the same
//! `secret.key`). The first instance to start stores its own; the others take that one and
//! signing key, the self-signed TLS identity and the console ticket key are kept in the
//! database, sealed under the secret key that every instance is provisioned with
//! (`RACKSHARE_SECRET_KEY` or the same `secret.key`). The first instance to start stores its own; the others take that one and
//! write it into their data dir, so a lone instance works exactly as before.

use crate::tls::{self_signed_paths, ReloadableTls};
use crate::StartError;
use inventory::Inventory;
use std::path::Path;
use std::sync::Arc;

/// The shared secret name of the signing key's seed (hex).
const SIGNING_KEY: &str = "signing_key";
/// The shared secret name of the self-signed certificate and key (`{"cert": PEM, "key": PEM}`).
const SELF_SIGNED_TLS: &str = "self_signed_tls";
/// The shared secret name of the console SSH door's host key (OpenSSH private key text).
const CONSOLE_SSH_HOST_KEY: &str = "console_ssh_host_key";

/// Loads (or creates) the data dir's console SSH host key, then takes the database's shared
/// one: the first instance to start (or an existing single instance, on its first start with
/// this version) stores its own, so every instance presents the same host key and `ssh` does
/// not warn when a name moves between them.
pub async fn console_ssh_host_key(
    inv: &Inventory,
    data_dir: &Path,
) -> Result<russh::keys::PrivateKey, StartError> {
    let path = data_dir.join("console-ssh-host-key");
    let bad =
        |e: String| StartError::Boot(format!("the console SSH host key {}: {e}", path.display()));
    let file = path.clone();
    let ours = tokio::task::spawn_blocking(move || {
        crate::console_ssh::load_or_create_host_key(&file)?;
        std::fs::read_to_string(&file)
    })
    .await
    .map_err(|e| bad(e.to_string()))?
    .map_err(|e| bad(e.to_string()))?;
    let shared = inv.shared_secret(CONSOLE_SSH_HOST_KEY, &ours).await?;
    let key = russh::keys::PrivateKey::from_openssh(shared.as_bytes())
        .map_err(|e| StartError::Boot(format!("the database's console SSH host key: {e}")))?;
    if shared != ours {
        tracing::info!("presenting the console SSH host key the other instances use");
        write_private(&path, shared.as_bytes())?;
    }
    Ok(key)
}

/// The shared secret name of the key console tickets are signed with (hex).
const CONSOLE_TICKET_KEY: &str = "console_ticket_key";

/// The key every instance signs and checks console tickets with (made by the first).
pub async fn console_ticket_key(inv: &Inventory) -> Result<[u8; 32], StartError> {
    let ours = hex::encode(rand::random::<[u8; 32]>());
    let shared = inv.shared_secret(CONSOLE_TICKET_KEY, &ours).await?;
    hex::decode(shared.trim())
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| StartError::Boot("the database's console ticket key is not 32 bytes".into()))
}

/// Loads (or creates) the data dir's signing key, then takes the database's shared one.
pub async fn signing_key(
    inv: &Inventory,
    data_dir: &Path,
) -> Result<Arc<trust::SigningKey>, StartError> {
    let path = data_dir.join("signing.key");
    let file = path.clone();
    let seed = tokio::task::spawn_blocking(move || {
        trust::SigningKey::load_or_create(&file)?;
        std::fs::read(&file).map_err(|source| trust::TrustError::KeyFile {
            path: file.display().to_string(),
            source,
        })
    })
    .await
    .map_err(|e| StartError::Boot(format!("loading the signing key: {e}")))??;
    let shared = inv.shared_secret(SIGNING_KEY, &hex::encode(&seed)).await?;
    let shared = hex::decode(shared.trim())
        .map_err(|e| StartError::Boot(format!("the database's signing key: {e}")))?;
    if shared != seed {
        tracing::info!("signing wipe certificates with the key the other instances use");
        write_private(&path, &shared)?;
    }
    let key = trust::SigningKey::from_seed(&shared)
        .ok_or_else(|| StartError::Boot("the database's signing key is not 32 bytes".into()))?;
    Ok(Arc::new(key))
}

/// Makes the data dir's self-signed identity the database's shared one (storing it when
/// there is none yet), reloading `tls` when it changed.
pub async fn self_signed_tls(
    inv: &Inventory,
    data_dir: &Path,
    tls: &Arc<ReloadableTls>,
) -> Result<(), StartError> {
    let (cert, key) = self_signed_paths(data_dir);
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| StartError::DataDir {
            path: p.display().to_string(),
            source,
        })
    };
    let ours = serde_json::json!({"cert": read(&cert)?, "key": read(&key)?});
    let shared = inv
        .shared_secret(SELF_SIGNED_TLS, &ours.to_string())
        .await?;
    let shared: serde_json::Value = serde_json::from_str(&shared)
        .map_err(|e| StartError::Boot(format!("the database's TLS identity: {e}")))?;
    if shared == ours {
        return Ok(());
    }
    let (Some(c), Some(k)) = (shared["cert"].as_str(), shared["key"].as_str()) else {
        return Err(StartError::Boot(
            "the database's TLS identity lacks its certificate or key".into(),
        ));
    };
    write_private(&cert, c.as_bytes())?;
    write_private(&key, k.as_bytes())?;
    let tls = tls.clone();
    tokio::task::spawn_blocking(move || tls.reload())
        .await
        .map_err(|e| StartError::Boot(format!("reloading the TLS certificate: {e}")))??;
    tracing::info!("speaking TLS with the certificate the other instances use");
    Ok(())
}

/// Writes `bytes` to `path` (mode 0600) through a renamed temporary file.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("shared.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(err)?;
    std::io::Write::write_all(&mut f, bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
