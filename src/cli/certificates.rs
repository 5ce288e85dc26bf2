//! `apiward users add-certificate ID --cert FILE`: records a client certificate's SHA-256
//! fingerprint in the user's `client_certificates` (the certificate itself is not stored).

use std::path::Path;

use toml_edit::{InlineTable, Item, Value};

use super::CliError;
use crate::config::edit::{self, ConfigFile, EditError};
use crate::config::reload::now_unix;

pub fn add(config: &Path, id: &str, cert: &Path) -> Result<(), CliError> {
    let certs =
        crate::tls::read_certificates(cert).map_err(|e| CliError::Certificate(e.to_string()))?;
    let first = certs
        .first()
        .ok_or_else(|| CliError::Certificate(format!("{}: no certificate", cert.display())))?;
    x509_parser::parse_x509_certificate(first).map_err(|e| {
        CliError::Certificate(format!("{}: not an X.509 certificate: {e}", cert.display()))
    })?;
    let sha256 = crate::tls::fingerprint(first).to_hex();

    let mut file = ConfigFile::open(config)?;
    let user = file.user_mut(id)?;
    let created = edit::datetime(now_unix())?;
    let list = user
        .entry("client_certificates")
        .or_insert(Item::Value(Value::Array(toml_edit::Array::new())));
    let Some(array) = list.as_array_mut() else {
        return Err(CliError::Edit(EditError::Layout(format!(
            "client_certificates of {id} is not an inline array: add {{ sha256 = \"{sha256}\" }} by hand"
        ))));
    };
    let known = array.iter().any(|v| {
        v.as_inline_table()
            .and_then(|t| t.get("sha256"))
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case(&sha256))
    });
    if known {
        eprintln!(
            "{id} already has this certificate ({}…): nothing changed",
            &sha256[..16]
        );
        return Ok(());
    }
    let mut entry = InlineTable::new();
    entry.insert("sha256", sha256.as_str().into());
    entry.insert("created", Value::from(created));
    array.push(entry);
    file.save()?;
    eprintln!(
        "certificate {}… recorded for {id}: a client presenting it over TLS (signed by [server.tls] client_ca) is identified as {id}",
        &sha256[..16]
    );
    Ok(())
}
