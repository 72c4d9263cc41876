//! `routes.yaml` in two layers: [`file`] is what operators write (serde, closed structs);
//! [`Config`] is what the gateway runs on, produced by [`parse`], which checks everything it
//! can without loading models and reports *every* problem at once, each with its line and
//! column. A file that fails is never used: the caller keeps what it had.

mod errors;
pub mod file;
mod route_file;
pub mod keys;
pub mod limits;
pub mod locate;
pub mod quality;
mod routes;
mod sections;
mod summary;
mod types;

use std::path::Path as FsPath;

use file::FileConfig;
use sections::Base;

pub(crate) use errors::positive;
pub use errors::{ConfigError, Errors, format_errors, read_source, valid_name, yaml_error};
pub use file::{OnFailure, OnUnavailable};
use keys::KeyStore;
pub use limits::{ChooseVariant, ClientAddress, Limits};
pub use locate::Path;
pub use types::*;

/// Reads and validates a config file.
pub fn load(file: &FsPath) -> Result<Config, Vec<ConfigError>> {
    let source = read_source(file)?;
    parse(file, &source)
}

/// Validates config text; `file` names it in errors and anchors relative paths. The keys file
/// is read and checked too.
pub fn parse(file: &FsPath, source: &str) -> Result<Config, Vec<ConfigError>> {
    parse_with_keys(file, source, None)
}

/// The keys a reload keeps: the store in force, read from `file`. A reload of `routes.yaml`
/// does not read the keys file again (the keys reload on their own), unless it names another.
pub struct KeysInForce<'a> {
    pub file: &'a FsPath,
    pub store: &'a KeyStore,
}

/// [`parse`], taking the keys from `in_force` when the config still names its file.
pub fn parse_with_keys(
    file: &FsPath,
    source: &str,
    in_force: Option<KeysInForce<'_>>,
) -> Result<Config, Vec<ConfigError>> {
    let parsed: FileConfig = yaml_serde::from_str(source)
        .map_err(|e| vec![errors::missing_sections(file, source).unwrap_or_else(|| yaml_error(file, &e))])?;
    let base = Base::of(file);
    let mut errors = Errors::new(file, source);
    let FileConfig {
        listen,
        tls,
        auth,
        rate_limits,
        limits,
        server,
        shadow,
        quality,
        models_dir,
        pools,
        routes,
    } = parsed;

    // One check per section, in the file's order; each adds every problem it finds.
    let listeners = sections::listen(&mut errors, listen);
    let may_choose_variant = limits::choose_variant(&mut errors, auth.may_choose_variant);
    let (tls_cert, tls_key) = sections::tls(&mut errors, &tls, &base);
    let rate_limits = sections::rate_limits(&mut errors, rate_limits);
    let limits = limits::limits(&mut errors, limits);
    let server = sections::server(&mut errors, server, &listeners.https, &base);
    let shadow = sections::shadow(&mut errors, shadow, &base);
    let quality = quality::quality(&mut errors, quality);
    let (keys_file, keys) = sections::keys(
        &mut errors,
        &auth.keys_file,
        auth.create_dev_key,
        &base,
        in_force,
        &rate_limits,
    );
    let pools = routes::pools(&mut errors, pools, &base.relative(&models_dir), &limits);
    let routes = routes::routes(&mut errors, routes, &pools);

    if !errors.list.is_empty() {
        return Err(errors.list);
    }
    // The rollout engine's state lives beside the shadow store unless the file says where.
    let rollout_state = server.rollout_state.unwrap_or_else(|| {
        shadow
            .store
            .parent()
            .map_or_else(|| "rollouts.json".into(), |d| d.join("rollouts.json"))
    });
    Ok(Config {
        file: file.to_path_buf(),
        source: source.to_string(),
        https: listeners.https,
        admin: listeners.admin,
        admin_hosts: listeners.admin_hosts,
        client_address: listeners.client_address,
        tls_cert,
        tls_key,
        generate_dev_cert: tls.generate_dev_cert,
        keys_file,
        create_dev_key: auth.create_dev_key,
        keys,
        may_choose_variant,
        rate_limits,
        limits,
        threads: server.threads,
        access_log: server.access_log,
        shutdown_grace: server.shutdown_grace,
        watch: server.watch,
        upgrade_sock: server.upgrade_sock,
        rollout_state,
        log_format: server.log_format,
        shadow,
        quality,
        pools,
        routes,
    })
}

#[cfg(test)]
pub(crate) mod tests;
