//! Connecting to a member's admin API: settings from flags, else `PROVISIONER_ADMIN_*`
//! environment variables, else a client file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::grpc::admin::admin_client::AdminClient;
use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::{AdminArgs, Client, Exit, Failure};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    endpoint: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
}

pub(super) async fn connect(a: &AdminArgs) -> Result<Client, Failure> {
    let file = match a.client_config.clone().or_else(default_client_file) {
        Some(p) if p.exists() || a.client_config.is_some() => read_client_file(&p)?,
        _ => ClientFile::default(),
    };
    let need = |v: Option<PathBuf>, what: &str| {
        v.ok_or_else(|| {
            Failure::new(
                Exit::Usage,
                format!(
                    "--{what} (or PROVISIONER_ADMIN_{}) is required",
                    what.to_uppercase()
                ),
            )
        })
    };
    let endpoint = a.endpoint.clone().or(file.endpoint).ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            "--endpoint (or PROVISIONER_ADMIN_ENDPOINT) is required",
        )
    })?;
    let url = if endpoint.contains("://") {
        endpoint.clone()
    } else {
        format!("https://{endpoint}")
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", p.display())))
    };
    let ca = read(&need(a.ca.clone().or(file.ca), "ca")?)?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    // without a certificate the call goes out anyway and the server says why it refuses
    match (a.cert.clone().or(file.cert), a.key.clone().or(file.key)) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(read(&cert)?, read(&key)?));
        }
        (None, None) => {}
        _ => return Err(Failure::new(Exit::Usage, "--cert and --key go together")),
    }
    let server_name = a.server_name.clone().or(file.server_name).or_else(|| {
        url.split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .map(|hostport| match hostport.rsplit_once(':') {
                Some((h, _)) => h.trim_matches(['[', ']']).to_string(),
                None => hostport.to_string(),
            })
    });
    if let Some(n) = server_name {
        tls = tls.domain_name(n);
    }
    let channel = Endpoint::from_shared(url.clone())
        .map_err(|e| Failure::new(Exit::Usage, format!("--endpoint {endpoint:?}: {e}")))?
        .tls_config(tls)
        .map_err(|e| Failure::new(Exit::Usage, format!("tls: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(a.timeout))
        .connect()
        .await
        .map_err(|e| {
            let mut msg = format!("cannot connect to {endpoint}: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            Failure::new(Exit::Unavailable, msg)
        })?;
    Ok(AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

fn read_client_file(p: &Path) -> Result<ClientFile, Failure> {
    let bad = |e: String| Failure::new(Exit::Usage, format!("{}: {e}", p.display()));
    let text = std::fs::read_to_string(p).map_err(|e| bad(e.to_string()))?;
    yaml_serde::from_str(&text).map_err(|e| bad(e.to_string()))
}

fn default_client_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/provisioner/admin.yaml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_files_that_are_not_the_expected_yaml_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.yaml");
        for bad in [
            "endpoint: [unclosed",
            "nonsense_key: 1\n",
            "\u{0}\u{1}garbage",
            "- a\n- b\n",
        ] {
            std::fs::write(&p, bad).unwrap();
            let Err(err) = read_client_file(&p) else {
                panic!("garbage accepted: {bad:?}");
            };
            assert_eq!(err.exit, Exit::Usage, "{bad:?}");
            assert!(err.message.contains("admin.yaml"), "{}", err.message);
        }
        assert!(read_client_file(&dir.path().join("missing.yaml")).is_err());
        std::fs::write(&p, "endpoint: 10.0.0.1:7101\nca: /c/ca.pem\n").unwrap();
        let Ok(ok) = read_client_file(&p) else {
            panic!("a valid file was refused");
        };
        assert_eq!(ok.endpoint.as_deref(), Some("10.0.0.1:7101"));
    }
}
